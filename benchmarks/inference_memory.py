"""Host memory of loading a generator for sampling: the whole train state vs the inference bundle.

    python -m benchmarks.inference_memory [--config=experiments/quickstart/distill_adm.py] \
        [--set model.depth_double=4 ...] [--repeats=3] [--max_load=1.0] [--no-append]

Writes a checkpoint of a distillation stage's full train state (student, EMA, frozen teacher,
fake score and discriminator with their optimizers; untrained weights: only the sizes matter)
into a temporary workdir, then loads the generator from it in fresh processes, the two arms
interleaved `--repeats` times:

- full state: what `seedjax.tools.sample` did before the inference bundle: build the stage's
  whole abstract state and restore every array of the checkpoint to host memory;
- bundle: `seedjax.inference.load`: the generator's EMA parameters only, read straight
  onto the mesh.

Reported per arm: the median peak resident memory of the process (ru_maxrss; it includes the
Python/JAX runtime, measured alone as a third arm) and the bytes of arrays read from the
checkpoint. A table is printed and appended to BENCHMARKS.md (unless --no-append, or unless the
1-minute load average at the start was above --max_load).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARM_CODE = {
    "runtime": "import jax, seedjax.inference; jax.numpy.zeros(1).block_until_ready(); read = 0",
    "full state": """
import jax, numpy as np
from flax import nnx
from seedjax.config import workdir_config
from seedjax.train.checkpoint import load_state_tree
from seedjax.train.stage import load_stage
config = workdir_config(WORKDIR)
stage = load_stage(config.stage)
tree = load_state_tree(WORKDIR)
graphdef, state = nnx.split(nnx.eval_shape(lambda: stage.init(config, nnx.Rngs(config.seed))))
nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, tree))
read = sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
""",
    "bundle": """
import jax, numpy as np
from flax import nnx
from seedjax import inference
bundle = inference.load(WORKDIR)
read = sum(x.nbytes for x in jax.tree.leaves(nnx.state(bundle.model)))
""",
}
MEASURE = "\nimport resource, json; print(json.dumps({'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'read': int(read)}))"


def make_checkpoint(spec: str, overrides: dict, workdir: str) -> int:
    """Write the stage's initial full state as checkpoint 0 of `workdir`; returns its bytes."""
    code = f"""
import jax, json
from flax import nnx
from seedjax.config import load_config, save_config
from seedjax.train.checkpoint import Checkpointer
from seedjax.train.stage import load_stage
config = load_config({spec!r}, {overrides!r})
stage = load_stage(config.stage)
state = jax.jit(lambda: nnx.split(stage.init(config, nnx.Rngs(0)))[1])()
save_config(config, {workdir!r})
ckpt = Checkpointer({workdir!r}, async_save=False)
ckpt.save(0, state, {{}}, force=True)
ckpt.close()
print(json.dumps(sum(x.nbytes for x in jax.tree.leaves(state))))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(arm: str, workdir: str) -> dict:
    code = f"WORKDIR = {workdir!r}\n" + ARM_CODE[arm] + MEASURE
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if out.returncode:
        raise SystemExit(f"{arm}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/quickstart/distill_adm.py")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-append", action="store_true")
    protocol.add_max_load(parser)
    args = parser.parse_args()
    load_before = protocol.begin(args.max_load, args.no_append)
    overrides = dict(item.split("=", 1) for item in args.set)
    workdir = tempfile.mkdtemp(prefix="seedjax_bench_inference_")
    state_bytes = make_checkpoint(args.config, overrides, workdir)
    samples = {arm: [] for arm in ARM_CODE}
    for _ in range(args.repeats):
        for arm in ARM_CODE:  # interleaved
            samples[arm].append(measure(arm, workdir))
    mib = 2**20
    rows = [(arm, statistics.median(s["rss"] for s in runs) / mib, statistics.median(s["read"] for s in runs) / mib)
            for arm, runs in samples.items()]
    lines = [f"\n### Inference bundle: host memory of loading a generator ({datetime.date.today()})\n",
             f"`python -m benchmarks.inference_memory --config={args.config}"
             + "".join(f" --set {k}={v}" for k, v in overrides.items()) + f" --repeats={args.repeats}`; "
             f"checkpoint of the full train state: {state_bytes / mib:.1f} MiB; "
             f"medians of {args.repeats} interleaved fresh processes.\n",
             f"Machine: {protocol.machine_header(load_before)}.\n",
             "| arm | peak RSS (MiB) | arrays read (MiB) |", "|---|---|---|"]
    lines += [f"| {arm} | {rss:.0f} | {read:.1f} |" for arm, rss, read in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    protocol.append(text, load_before, args.max_load, args.no_append)


if __name__ == "__main__":
    main()
