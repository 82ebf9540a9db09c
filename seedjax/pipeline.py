"""Run a chain of stages, each in its own workdir, each initialised from the one before.

    python -m seedjax.pipeline --pipeline=experiments/quickstart/pipeline.py[:ARG] --workdir=runs/quickstart
        [--only=pretrain,sft] [--config.key=value ...]   (overrides go to every stage that has the key)

A pipeline file defines `get_pipeline(arg) -> list[dict]`, each entry
`dict(name=..., config='experiments/...py:arg', init_from='<earlier name>' or '', overrides={...})`;
an override value may name another stage's workdir as '{root}/<name>'. A tool step between
stages is `dict(name=..., module='seedjax.tools.ode_pairs', init_from=..., args={...})`: it runs
`python -m <module> --workdir=<root>/<name> [--init_from=<root>/<init_from>] --<key>=<value> ...`.
Stages run as separate `python -m seedjax.main` processes (a clean JAX runtime each), in order;
re-running the command resumes the first unfinished stage. Exit code: the first failing stage's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

from seedjax.config import ConfigError, load_config, parse_arg  # noqa: F401  (parse_arg for pipeline files)


def load_pipeline(spec: str) -> list[dict]:
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"pipeline file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_seedjax_pipeline", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    stages = module.get_pipeline(arg or None)
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


def _applicable(overrides: dict[str, str], config_spec: str) -> dict[str, str]:
    """Only the overrides whose key exists in this stage's config."""
    cfg = load_config(config_spec)
    out = {}
    for key, value in overrides.items():
        node, ok = cfg, True
        for part in key.split("."):
            if hasattr(node, "keys") and part in node:
                node = node[part]
            else:
                ok = False
                break
        if ok:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags, overrides = {}, {}
    for a in argv:
        if not a.startswith("--") or "=" not in a:
            print(f"seedjax.pipeline: bad argument {a!r} (use --key=value)", file=sys.stderr)
            return 2
        k, v = a[2:].split("=", 1)
        (overrides.__setitem__(k[len("config."):], v) if k.startswith("config.") else flags.__setitem__(k, v))
    try:
        stages = load_pipeline(flags["pipeline"])
        root = flags["workdir"]
    except KeyError as e:
        print(f"seedjax.pipeline: --{e.args[0]} is required", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"seedjax.pipeline: error: {e}", file=sys.stderr)
        return 2
    only = set(flags["only"].split(",")) if flags.get("only") else None
    os.makedirs(root, exist_ok=True)
    timings = {}
    for stage in stages:
        if only and stage["name"] not in only:
            continue
        cmd = stage_command(stage, root, _applicable(overrides, stage["config"]) if "config" in stage else {})
        print(f"[pipeline] {stage['name']}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        timings[stage["name"]] = round(time.perf_counter() - t0, 1)
        if code != 0:
            print(f"[pipeline] stage {stage['name']} failed with exit code {code}", file=sys.stderr)
            return code
    with open(os.path.join(root, "pipeline_timings.json"), "w") as f:
        json.dump(timings, f, indent=2)
    print(f"[pipeline] done: {json.dumps(timings)} (seconds per stage)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
