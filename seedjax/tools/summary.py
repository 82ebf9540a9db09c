"""Print where a pipeline run's pictures and numbers are: `python -m seedjax.tools.summary ROOT`."""

from __future__ import annotations

import json
import os
import sys


def stage_summary(workdir: str) -> dict:
    rows = []
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    last_train = next((r for r in reversed(rows) if "loss" in r), {})
    evals = {}
    for r in rows:
        evals.update({k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")})
    samples = os.path.join(workdir, "samples")
    grids = sorted(os.listdir(samples), key=lambda n: int(n[5:-4])) if os.path.isdir(samples) else []
    return {"step": last_train.get("step"), "loss": last_train.get("loss"), "eval": evals,
            "samples": os.path.join(samples, grids[-1]) if grids else None}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m seedjax.tools.summary PIPELINE_WORKDIR", file=sys.stderr)
        return 2
    root = argv[0]
    timings = {}
    if os.path.exists(os.path.join(root, "pipeline_timings.json")):
        timings = json.load(open(os.path.join(root, "pipeline_timings.json")))
    for name in sorted(os.listdir(root), key=lambda n: list(timings).index(n) if n in timings else 99):
        workdir = os.path.join(root, name)
        if not os.path.isfile(os.path.join(workdir, "config.json")):
            continue
        s = stage_summary(workdir)
        print(f"== {name}  (step {s['step']}, loss {s['loss']:.4f}, {timings.get(name, '?')} s)"
              if s["loss"] is not None else f"== {name}")
        for k, v in s["eval"].items():
            print(f"   {k}: {v:.4f}" if isinstance(v, float) else f"   {k}: {v}")
        if s["samples"]:
            print(f"   samples: {s['samples']}")
        print(f"   metrics: {os.path.join(workdir, 'metrics.jsonl')}  (TensorBoard: {os.path.join(workdir, 'tb')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
