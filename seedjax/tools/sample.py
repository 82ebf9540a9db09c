"""Sample from any stage's trained generator at its NFE.

    python -m seedjax.tools.sample --workdir=runs/qs/dmdo --prompt="a handwritten 7" --prompt="the number 3" \
        [--num=8] [--seed=0] [--out=samples.png] [--steps=N] [--guidance=G] [--step=CHECKPOINT_STEP]

Rows of the PNG grid are prompts, columns are seeds. `--steps` / `--guidance` override the
run's sampling settings (`config.sampling.num_steps`, and the CFG scale for a teacher or the
embedded scale for a distilled student). Only the generator's parameters are read
(`seedjax.inference.load`). Prints the NFE (a true-CFG step counts twice) and the wall time
per image. Exit codes: 0 written, 2 bad arguments or workdir.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from PIL import Image

from seedjax import cli, inference
from seedjax.inference.bundle import BundleError
from seedjax.train.metrics import make_grid


@cli.entry("seedjax.tools.sample")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.tools.sample", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    parser.add_argument("--num", type=int, default=8, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--step", type=int, default=-1, help="checkpoint step (default: the latest)")
    args = parser.parse(argv)
    if args.num < 1:
        print(f"sample: --num must be >= 1, got {args.num}", file=sys.stderr)
        return 2
    path = args.workdir if args.step < 0 else os.path.join(args.workdir, "checkpoints", str(args.step))
    try:
        bundle = inference.load(path).with_sampling(args.steps, args.guidance)
    except BundleError as e:
        print(f"sample: {e}", file=sys.stderr)
        return 2
    captions = [p for p in args.prompt for _ in range(args.num)]
    batch = bundle.prompts(captions)
    generate, params = bundle.generate_fn()
    jitted = jax.jit(generate)
    rng = jax.random.key(args.seed)
    jax.block_until_ready(jitted(params, batch, rng))  # compile
    t0 = time.perf_counter()
    images = np.asarray(jax.device_get(jitted(params, batch, rng)))
    seconds = (time.perf_counter() - t0) / len(captions)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(make_grid(images[:, 0] if images.shape[1] == 1 else images, cols=args.num)).save(args.out)
    print(f"sample: {bundle.config.stage} at {bundle.nfe} NFE, {seconds * 1e3:.1f} ms/image; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
