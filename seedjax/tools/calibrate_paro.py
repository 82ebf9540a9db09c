"""Calibrate a PAROAttention plan for a trained text-to-image DiT.

    python -m seedjax.tools.calibrate_paro --workdir=RUN --density=0.3
        [--out=RUN/paro/plan_d0.30.safetensors] [--num_prompts=4] [--num_steps=<config>]
        [--early_buckets=3] [--block=64] [--quant_weight=0.25] [--no_reorder] [--seed=0]

Loads the run's config and latest checkpoint (EMA parameters when the run samples from
them), samples `--num_prompts` training-split captions with the run's sampler while a
capture backend records block statistics of every layer's attention maps, and writes the
plan (see `seedjax.kernels.paro`). Timestep buckets: each of the first `--early_buckets`
sampling steps gets its own bucket, the remaining steps share one.

To sample with the plan, give the MMDiT `attention_backend='paro'` and the attention kwargs
{'plan': path, 'timestep': t} (`sample` below does this).
Exit codes: 0 written, 2 bad arguments or a workdir without a usable checkpoint.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import data_pipelines
from seedjax import cli, inference
from seedjax.diffusion.sampling import Sampler
from seedjax.kernels import paro
from seedjax.models import generator
from seedjax.models.geometry import Geometry


def load_model(workdir: str):
    """(generator with the run's sampling parameters, config) of a text-to-image run."""
    bundle = inference.load(workdir)
    token_grid(bundle.config)
    return bundle.model, bundle.config


def with_backend(model, config, backend: str):
    """The same parameters in a model whose MMDiT uses attention backend `backend`."""
    config = config.copy_and_resolve_references()
    config.model.attention_backend = backend
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: generator.build(config, nnx.Rngs(0), model.guidance_embedded)))
    return nnx.merge(graphdef, nnx.state(model))


def token_grid(config) -> tuple[int, int]:
    if config.input.key != "image":
        raise ValueError("calibrate_paro: only pixel-space runs (config.input.key='image') are supported so far")
    return Geometry.of(config).grid_hw


def sampler_for(config, num_steps: int = 0) -> Sampler:
    s = config.sampling
    return Sampler.make(num_steps or s.num_steps, s.shift, s.guidance_scale)


def sample(model, config, prompts: dict, rng, *, num_steps: int = 0, attention_kwargs=None):
    """Images [N, H, W, C] for `prompts` with the run's sampler; `attention_kwargs(t)` -> dict
    of backend kwargs for velocity evaluations at flow times t [B] (None for dense)."""
    x = sampler_for(config, num_steps).generate(model, prompts, Geometry.of(config), rng, attention=attention_kwargs)
    return jnp.clip(x[:, 0], -1.0, 1.0)


def bucket_edges(config, num_steps: int, early_buckets: int) -> tuple[float, ...]:
    """Edges between the first `early_buckets` sampling times and the next ones."""
    sigmas = np.asarray(sampler_for(config, num_steps).sigmas)
    k = min(early_buckets, len(sigmas) - 2)
    return tuple(float((sigmas[i] + sigmas[i + 1]) / 2) for i in range(max(k, 0)))


def calibrate(model, config, prompts: dict, rng, *, num_steps: int = 0, early_buckets: int = 3, block: int = 64,
              threshold: float = 1e-3, sparse_fraction: float = 0.9) -> paro.Calibration:
    """Sample `prompts` while recording per-layer block statistics of the attention maps."""
    grid = token_grid(config)
    layout = paro.SequenceLayout(config.data.max_text_len, grid)
    num_layers = config.model.depth_double + config.model.depth_single
    calib = paro.Calibration(layout, num_layers, config.model.num_heads, bucket_edges(config, num_steps, early_buckets),
                             block_q=block, block_k=block, threshold=threshold, sparse_fraction=sparse_fraction)
    capture = with_backend(model, config, "paro_capture")
    graphdef, state = nnx.split(capture)
    run = jax.jit(lambda state, prompts, rng: sample(
        nnx.merge(graphdef, state), config, prompts, rng, num_steps=num_steps,
        attention_kwargs=lambda t: {"calibration": calib, "timestep": t}))
    jax.block_until_ready(run(state, prompts, rng))
    jax.effects_barrier()  # all host callbacks delivered
    return calib


def calibration_prompts(config, num: int, seed: int) -> dict:
    batch = data_pipelines.make_eval_batch(config.data, num=num, seed=seed, split="train")
    return {k: jnp.asarray(batch[k]) for k in ("tokens", "text_mask") if k in batch} | (
        {"target_size": jnp.asarray(batch["target_size"])} if "target_size" in batch else {})


def summarize(plan: paro.ParoPlan) -> str:
    lines = [f"plan: {plan.model_shape['num_layers']} layers x {len(plan.bucket_edges) + 1} buckets "
             f"(edges {', '.join(f'{e:.3f}' for e in plan.bucket_edges)}) x {plan.model_shape['num_heads']} heads; "
             f"blocks {plan.model_shape['block_q']}; visual density {plan.density():.3f}, "
             f"overall {plan.density(visual_only=False):.3f}"]
    counts = Counter(plan.orders[i] for i in plan.order_ids.reshape(-1))
    lines.append("orders chosen: " + ", ".join(f"{o} {counts[o]}" for o in plan.orders))
    return "\n".join(lines)


@cli.entry("seedjax.tools.calibrate_paro")
def main(argv: list[str]) -> int:
    p = cli.Parser("seedjax.tools.calibrate_paro", __doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--density", type=float, required=True, help="fraction of visual blocks computed, in (0, 1]")
    p.add_argument("--out", default="", help="plan file (default WORKDIR/paro/plan_d<density>.safetensors)")
    p.add_argument("--num_prompts", type=int, default=4)
    p.add_argument("--num_steps", type=int, default=0, help="sampling steps (default: the run's config)")
    p.add_argument("--early_buckets", type=int, default=3)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--quant_weight", type=float, default=0.25)
    p.add_argument("--no_reorder", action="store_true", help="keep the natural token order (ablation)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse(argv)
    try:
        if not 0.0 < args.density <= 1.0:
            raise ValueError(f"--density must be in (0, 1], got {args.density}")
        if args.num_prompts < 1 or args.block < 1 or args.early_buckets < 0:
            raise ValueError("--num_prompts and --block must be positive, --early_buckets >= 0")
        model, config = load_model(args.workdir)
    except (ValueError, FileNotFoundError) as e:
        print(f"calibrate_paro: error: {e}", file=sys.stderr)
        return 2
    rng = jax.random.PRNGKey(args.seed)
    prompts = calibration_prompts(config, args.num_prompts, args.seed)
    calib = calibrate(model, config, prompts, rng, num_steps=args.num_steps, early_buckets=args.early_buckets,
                      block=args.block)
    plan = calib.plan(args.density, quant_weight=args.quant_weight, reorder=not args.no_reorder)
    plan.info["workdir"] = os.path.abspath(args.workdir)
    plan.info["num_prompts"] = args.num_prompts
    out = args.out or os.path.join(args.workdir, "paro", f"plan_d{args.density:.2f}.safetensors")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plan.save(out)
    print(summarize(plan))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
