"""Print where a pipeline run's pictures and numbers are.

    python -m seedjax.tools.summary ROOT

ROOT is a pipeline workdir (one sub-directory per stage, e.g. runs/quickstart) or a single
run's workdir. For each stage, in the order it ran: its last training step and loss, its wall
time (from ROOT/pipeline_timings.json when present), its latest evaluation numbers (the prompt
accuracy first: the share of generated digits that the digit classifier reads as the prompted
digit), the newest sample grid, and where its metrics.jsonl and TensorBoard logs are.

Exit codes: 0 printed; 2 bad arguments, or ROOT missing or holding no run.
"""

from __future__ import annotations

import json
import os
import re
import sys

USAGE = "usage: python -m seedjax.tools.summary ROOT   (a pipeline workdir such as runs/quickstart, or one run's workdir)"
_GRID = re.compile(r"^step_(\d+)\.(png|gif|mp4)$")


def read_metrics(workdir: str) -> list[dict]:
    """The rows of `workdir/metrics.jsonl`; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def latest_grid(workdir: str) -> str | None:
    """The sample grid of the highest step under `workdir/samples/` (step_<N>.png, .gif or .mp4; a
    video's animation before its filmstrip PNG)."""
    samples = os.path.join(workdir, "samples")
    if not os.path.isdir(samples):
        return None
    grids = [(int(m.group(1)), m.group(2) != "png", name) for name in os.listdir(samples) if (m := _GRID.match(name))]
    return os.path.join(samples, max(grids)[2]) if grids else None


def stage_summary(workdir: str) -> dict:
    rows = read_metrics(workdir)
    last_train = next((r for r in reversed(rows) if "loss" in r), {})
    evals, eval_step = {}, None
    for r in rows:
        found = {k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}
        if found:
            evals.update(found)
            eval_step = r.get("step")
    return {"step": last_train.get("step"), "loss": last_train.get("loss"), "eval": evals,
            "eval_step": eval_step, "samples": latest_grid(workdir)}


def _is_run(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def stage_dirs(root: str) -> list[tuple[str, str]]:
    """(name, workdir) of every run under `root` (or `root` itself when it is one run), in run order:
    the order of pipeline_timings.json, then the time each run's config.json was written."""
    if _is_run(root):
        return [(os.path.basename(os.path.normpath(root)) or root, root)]
    timings = _timings(root)
    names = [n for n in os.listdir(root) if _is_run(os.path.join(root, n))]
    order = {n: i for i, n in enumerate(timings)}
    names.sort(key=lambda n: (order.get(n, len(order)), os.path.getmtime(os.path.join(root, n, "config.json")), n))
    return [(n, os.path.join(root, n)) for n in names]


def _timings(root: str) -> dict:
    try:
        with open(os.path.join(root, "pipeline_timings.json")) as f:
            timings = json.load(f)
        return timings if isinstance(timings, dict) else {}
    except (OSError, ValueError):
        return {}


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_stage(name: str, workdir: str, seconds=None) -> list[str]:
    s = stage_summary(workdir)
    head = f"== {name}"
    details = []
    if s["step"] is not None:
        details.append(f"step {s['step']}")
    if isinstance(s["loss"], (int, float)):
        details.append(f"loss {s['loss']:.4f}")
    if isinstance(seconds, (int, float)):
        details.append(f"{seconds:.0f} s")
    lines = [head + (f"  ({', '.join(details)})" if details else "")]
    evals = dict(s["eval"])
    if "prompt_accuracy" in evals:
        lines.append(f"   prompt accuracy: {_fmt(evals.pop('prompt_accuracy'))}"
                     f"  (digit classifier on held-out prompts, eval at step {s['eval_step']})")
    for k, v in evals.items():
        lines.append(f"   {k}: {_fmt(v)}")
    lines.append(f"   sample grid: {s['samples'] or 'none (this stage writes no samples)'}")
    lines.append(f"   metrics: {os.path.join(workdir, 'metrics.jsonl')}  (TensorBoard: {os.path.join(workdir, 'tb')})")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        print(__doc__.split("\n\n", 2)[2].rstrip())
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    root = argv[0]
    if not os.path.isdir(root):
        print(f"seedjax.tools.summary: {root} does not exist (nothing has run there yet)", file=sys.stderr)
        return 2
    stages = stage_dirs(root)
    if not stages:
        print(f"seedjax.tools.summary: no run in {root} (no */config.json)", file=sys.stderr)
        return 2
    timings = _timings(root)
    for name, workdir in stages:
        print("\n".join(format_stage(name, workdir, timings.get(name))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
