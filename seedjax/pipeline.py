"""Run a chain of stages, each in its own workdir, each initialised from the one before.

    python -m seedjax.pipeline --pipeline=experiments/quickstart/pipeline.py[:ARG] --workdir=runs/quickstart
        [--only=pretrain,sft] [--config.key=value ...]   (overrides go to every stage that has the key)

A pipeline file defines `get_pipeline(arg) -> list[dict]`, each entry
`dict(name=..., config='experiments/...py:arg', init_from='<earlier name>' or '', overrides={...})`;
an override value may name another stage's workdir as '{root}/<name>'. A tool step between
stages is `dict(name=..., module='seedjax.tools.ode_pairs', init_from=..., args={...})`: it runs
`python -m <module> --workdir=<root>/<name> [--init_from=<root>/<init_from>] --<key>=<value> ...`.
Stages run as separate `python -m seedjax.main` processes (a clean JAX runtime each), in order.

Before anything runs: an unknown flag, an `--only` name that is not a stage, an override key
that no stage to run has, or a value of the wrong type exits 2 with one line.

A stage counts as finished when its process exited 0 AND its workdir holds done.json (the
training loop writes it after the final checkpoint of a run that reached total_steps; for a
tool step the pipeline writes it when the tool exits 0). Only then does the next stage start.
SIGTERM, SIGINT and SIGHUP are forwarded to the running stage, and no further stage starts.
Re-running the command runs each training stage again (a finished one resumes at its last
step and exits at once) and skips tool steps whose done.json records the same command.

Exit codes: 0 every stage finished; 2 bad flags or pipeline; a failing stage's own code (e.g.
143, config.preemption_exit_code, when SIGTERM stopped it after a checkpoint); 1 when a stage
exited 0 without finishing (e.g. stopped by --stop_at_step); 128+N when signal N arrived
between stages.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

from seedjax import cli
from seedjax.config import ConfigError, load_config, parse_arg  # noqa: F401  (parse_arg for pipeline files)
from seedjax.train import workdir as workdir_lib

PROG = "seedjax.pipeline"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def load_pipeline(spec: str) -> list[dict]:
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"pipeline file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_seedjax_pipeline", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        stages = module.get_pipeline(arg or None)
    except ConfigError:
        raise
    except Exception as e:  # a broken pipeline file or a bad arg: bad input, with its cause
        raise ConfigError(f"pipeline {spec!r}: {type(e).__name__}: {e}") from e
    names = [s["name"] for s in stages]
    for s in stages:
        if s.get("init_from") and s["init_from"] not in names[: names.index(s["name"])]:
            raise ConfigError(f"pipeline stage {s['name']!r}: init_from {s['init_from']!r} is not an earlier stage")
    return stages


def stage_command(stage: dict, root: str, overrides: dict[str, str]) -> list[str]:
    if "module" in stage:  # a tool step (e.g. ODE-pair generation between distillation stages)
        cmd = [sys.executable, "-m", stage["module"], f"--workdir={os.path.join(root, stage['name'])}"]
        if stage.get("init_from"):
            cmd.append(f"--init_from={os.path.join(root, stage['init_from'])}")
        return cmd + [f"--{k}={v}" for k, v in stage.get("args", {}).items()]
    cmd = [sys.executable, "-m", "seedjax.main", f"--config={stage['config']}",
           f"--workdir={os.path.join(root, stage['name'])}"]
    if stage.get("init_from"):
        cmd.append(f"--config.init_from={os.path.join(root, stage['init_from'])}")
    for key, value in {**stage.get("overrides", {}), **overrides}.items():
        # '{root}' in a pipeline file's override names the pipeline's root (e.g. a reward workdir).
        cmd.append(f"--config.{key}={str(value).replace('{root}', root)}")
    return cmd


def _has_key(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def stage_overrides(stages: list[dict], overrides: dict[str, str]) -> dict[str, dict[str, str]]:
    """Stage name -> the command-line overrides its config has, each checked for its type there.

    A key that no stage has is an error (a typo would otherwise change nothing, silently).
    """
    out, used = {}, set()
    for stage in stages:
        if "config" not in stage:
            continue
        mine = {k: v for k, v in overrides.items() if _has_key(load_config(stage["config"]), k)}
        load_config(stage["config"], mine)  # wrong types fail here, before any stage runs
        out[stage["name"]] = mine
        used.update(mine)
    unused = [k for k in overrides if k not in used]
    if unused:
        names = [s["name"] for s in stages if "config" in s]
        raise ConfigError(f"unknown config key {'config.' + unused[0]!r}: no stage to run has it "
                          f"(stages with a config: {', '.join(names) or 'none'})")
    return out


class Forwarder:
    """While installed, SIGTERM/SIGINT/SIGHUP go to the running child; the last one is remembered."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def __enter__(self):
        for sig in FORWARDED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def run(self, cmd: list[str]) -> int:
        # Its own session: a terminal's Ctrl-C reaches the child once, through us, not twice.
        self.child = subprocess.Popen(cmd, start_new_session=True)
        try:
            return self.child.wait()
        finally:
            self.child = None


def finished(workdir: str) -> bool:
    """done.json is there and its step reached the total_steps of the workdir's config."""
    path = workdir_lib.as_path(workdir)
    done = workdir_lib.read_json(path / workdir_lib.DONE)
    config = workdir_lib.read_json(path / "config.json")
    if not done or not config:
        return False
    return int(done.get("step", -1)) >= int(config.get("total_steps", done.get("total_steps", 0)))


def _tool_done(workdir: str, cmd: list[str]) -> bool:
    done = workdir_lib.read_json(workdir_lib.as_path(workdir) / workdir_lib.DONE)
    return bool(done) and done.get("command") == cmd[1:]


@cli.entry(PROG)
def main(argv: list[str]) -> int:
    parser = cli.Parser(PROG, __doc__, overrides="config")
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--only", default="", help="comma-separated stage names to run (default: all)")
    args = parser.parse(argv)
    stages = load_pipeline(args.pipeline)
    names = [s["name"] for s in stages]
    if args.only:
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in only if n not in names] or ([] if only else [args.only])
        if unknown:
            raise cli.UsageError(f"--only: unknown stage {unknown[0]!r}; the stages are {', '.join(names)}")
        stages = [s for s in stages if s["name"] in only]
    per_stage = stage_overrides(stages, args.overrides)
    root = args.workdir
    workdir_lib.check_workdir(root)

    timings = {}
    with Forwarder() as forwarder:
        for stage in stages:
            if forwarder.received is not None:  # a signal between stages: start nothing more
                print(f"[pipeline] stopped by signal {forwarder.received} before stage {stage['name']}",
                      file=sys.stderr)
                return 128 + forwarder.received
            workdir = os.path.join(root, stage["name"])
            cmd = stage_command(stage, root, per_stage.get(stage["name"], {}))
            if "module" in stage and _tool_done(workdir, cmd):
                print(f"[pipeline] {stage['name']}: done earlier with the same command; skipped", file=sys.stderr)
                continue
            print(f"[pipeline] {stage['name']}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            code = forwarder.run(cmd)
            timings[stage["name"]] = round(time.perf_counter() - t0, 1)
            if code != 0:
                print(f"[pipeline] stage {stage['name']} exited with code {code}; not starting the next stage",
                      file=sys.stderr)
                return code if code > 0 else 128 - code  # killed by signal N: Popen reports -N
            if "module" in stage:
                workdir_lib.write_text(workdir_lib.as_path(workdir) / workdir_lib.DONE,
                                       json.dumps({"stage": stage["name"], "command": cmd[1:]}))
            elif not finished(workdir):
                print(f"[pipeline] stage {stage['name']} exited 0 but {workdir} holds no done.json for its "
                      "total_steps (stopped early, e.g. by --stop_at_step); not starting the next stage",
                      file=sys.stderr)
                return 1
    workdir_lib.write_text(workdir_lib.as_path(root) / "pipeline_timings.json", json.dumps(timings, indent=2))
    print(f"[pipeline] done: {json.dumps(timings)} (seconds per stage)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
