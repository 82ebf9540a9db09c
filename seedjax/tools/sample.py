"""Sample from any stage's trained model at its NFE.

    python -m seedjax.tools.sample --workdir=runs/qs/dmdo --prompt="a handwritten 7" --prompt="the number 3" \
        [--num=8] [--seed=0] [--out=samples.png] [--steps=N] [--guidance=G] [--step=CHECKPOINT_STEP]

Rows of the PNG grid are prompts, columns are seeds. `--steps` / `--guidance` override the
run's sampling settings (`config.sampling.num_steps`, and the CFG scale for a teacher or the
embedded scale for a distilled student). Prints the NFE (a true-CFG step counts twice) and the
wall time per image. Exit codes: 0 written, 2 bad arguments or workdir.

`load_run` and `run_sampler` are what `seedjax.eval.report` and `seedjax.tools.ode_pairs` use.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import numpy as np
from flax import nnx

from seedjax import cli
from seedjax.train.stage import Stage, load_stage


@dataclasses.dataclass
class Run:
    """A trained run loaded back: its config, stage (hooks) and train state."""

    workdir: str
    config: object
    stage: Stage
    state: nnx.Module


def load_run(workdir: str, step: int = -1) -> Run:
    """The run in `workdir` (its config.json and latest checkpoint, or checkpoint `step`)."""
    from seedjax.config import workdir_config
    from seedjax.train.checkpoint import load_state_tree

    config = workdir_config(workdir)
    if config is None:
        raise ValueError(f"{workdir}: no config.json (not a seedjax workdir)")
    stage = load_stage(config.stage)
    path = workdir if step < 0 else os.path.join(workdir, "checkpoints", str(step))
    try:
        tree = load_state_tree(path)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    graphdef, state = nnx.split(nnx.eval_shape(lambda: stage.init(config, nnx.Rngs(config.seed))))
    nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, tree))
    return Run(workdir, config, stage, nnx.merge(graphdef, state))


def override_sampling(config, steps: int = 0, guidance: float = 0.0) -> None:
    """Change a run's sampling steps / guidance scale in place (0 = keep)."""
    with config.unlocked():
        if steps > 0:
            config.sampling.num_steps = steps
        if guidance > 0:
            if "distill" in config and config.sampling.guidance_scale == 1.0:
                config.distill.guidance = guidance  # a distilled student: the embedded scale
            else:
                config.sampling.guidance_scale = guidance


def run_nfe(run: Run) -> int:
    """Network evaluations per image at the run's sampling settings (true CFG counts twice)."""
    if run.stage.nfe:
        return int(run.stage.nfe(run.config))
    from seedjax.diffusion.sampling import EulerSampler

    s = run.config.sampling
    return EulerSampler.make(s.num_steps, s.shift, s.guidance_scale).nfe


def run_sampler(run: Run):
    """(params, batch, rng) -> images [N, H, W, C] in [-1, 1]; params = the run's state (for `generate_all`)."""
    if not run.stage.sample:
        raise ValueError(f"{run.workdir}: stage {run.config.stage!r} has no sample() hook")
    graphdef, params = nnx.split(run.state)
    return (lambda p, b, r: run.stage.sample(nnx.merge(graphdef, p), run.config, r, b)), params


def prompt_batch(captions: list[str], config) -> dict:
    """Tokenized captions (+ target size) in the batch layout the models take."""
    from data_pipelines.core.tokenizer import tokenize

    tokens, mask = tokenize(captions, config.data.max_text_len)
    size = np.tile(np.asarray([[config.data.image_size, config.data.image_size]], np.int32), (len(captions), 1))
    return {"tokens": tokens, "text_mask": mask, "target_size": size}


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
    try:
        run = load_run(args.workdir, args.step)
        override_sampling(run.config, args.steps, args.guidance)
        generate, params = run_sampler(run)
    except ValueError as e:
        print(f"sample: {e}", file=sys.stderr)
        return 2
    from PIL import Image

    from seedjax.train.metrics import make_grid

    captions = [p for p in args.prompt for _ in range(args.num)]
    batch = prompt_batch(captions, run.config)
    jitted = jax.jit(generate)
    rng = jax.random.key(args.seed)
    jax.block_until_ready(jitted(params, batch, rng))  # compile
    t0 = time.perf_counter()
    images = np.asarray(jax.device_get(jitted(params, batch, rng)))
    seconds = (time.perf_counter() - t0) / len(captions)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(make_grid(images, cols=args.num)).save(args.out)
    print(f"sample: {run.config.stage} at {run_nfe(run)} NFE, {seconds * 1e3:.1f} ms/image; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
