"""Editing: sampling time with the references in the target's sequence, cached, and re-encoded.

    python -m benchmarks.reference_cache [--preset=small] [--image_size=32] [--references=1,2]
        [--steps=20] [--num=4] [--rounds=5] [--max_load=1.0] [--no-append]

One MMDiT (random weights; `experiments/seedream/edit.py`'s tiny settings with --preset's
width and depth) generates the same edit batch three ways, interleaved in one process:

- `joint`: model.reference_attention='joint' (FLUX.1 Kontext): every step runs the DiT on
  [text | target | references];
- `cached`: 'cached', as the sampler runs it: the references go through the blocks once per CFG
  branch, every step attends to their cached keys and values;
- `re-encoded`: 'cached' without the cache, the references encoded again at every step (what
  caching saves; its samples equal `cached`'s, tests/test_reference_cache.py).

True CFG (2 evaluations a step). Times are whole compiled generations (compile excluded), the
median with min-max over --rounds; the ratio column is joint / arm.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import protocol
from seedjax.config import load_config
from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion import sampling, tasks
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from seedjax.schema.models import MMDIT_PRESETS

CFG_SCALE = 2.5


def edit_setup(preset: str, image_size: int, references: int, num: int):
    overrides = {"data.image_size": str(image_size)}
    for key, value in MMDIT_PRESETS[preset].items():
        if key not in ("in_channels", "text_dim", "pooled_dim"):  # the tiny config's data and text encoder stay
            overrides[f"model.{key}"] = str(tuple(value) if isinstance(value, (list, tuple)) else value)
    cfg = load_config(f"{protocol.ROOT}/experiments/seedream/edit.py:variant=tiny", overrides)
    rng = np.random.default_rng(0)
    from data_pipelines.core.tokenizer import tokenize

    tokens, mask = tokenize(["make the red 3 blue"] * num, cfg.data.max_text_len)
    batch = tasks.edit_task({"tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask),
                             "source": jnp.asarray(rng.uniform(-1, 1, (num, references, image_size, image_size, 3)),
                                                   jnp.float32),
                             "num_sources": jnp.full((num,), references, jnp.int32)})
    return cfg, batch


def generate_fn(cfg, mode: str, steps: int):
    """A jitted (state, batch, rng) -> samples for reference_attention `mode` ('joint', 'cached',
    or 'recompute': cached attention without the cache)."""
    with cfg.unlocked():
        cfg.model.reference_attention = "joint" if mode == "joint" else "cached"
    model = generator.build(cfg, nnx.Rngs(0))
    geometry = Geometry.of(cfg)
    sampler = sampling.Sampler.make(steps, cfg_scale=CFG_SCALE)
    graphdef, state = nnx.split(model)

    def run(state, batch, rng):
        m = nnx.merge(graphdef, state)
        c = guidance_lib.condition(m, batch, cfg_scale=CFG_SCALE, geometry=None if mode == "recompute" else geometry)
        noise = geometry.noise(rng, generator.batch_size(batch))
        return sampler(lambda x, t: guidance_lib.velocity(m, c, x, t, geometry), noise)

    return jax.jit(run), state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(MMDIT_PRESETS))
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--references", default="1,2", help="reference images per edit")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num", type=int, default=4, help="edits per generation")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-append", dest="no_append", action="store_true")
    protocol.add_max_load(parser)
    args = parser.parse_args(argv)
    load_before = protocol.begin(args.max_load, args.no_append)
    rows = []
    for references in (int(r) for r in args.references.split(",")):
        cfg, batch = edit_setup(args.preset, args.image_size, references, args.num)
        arms = {}
        for mode, label in (("joint", "joint"), ("cached", "cached"), ("recompute", "re-encoded")):
            fn, state = generate_fn(cfg, mode, args.steps)
            arms[label] = lambda fn=fn, state=state: jax.block_until_ready(fn(state, batch, jax.random.key(0)))
        stats = protocol.interleave(arms, rounds=args.rounds)
        tokens = Geometry.of(cfg).num_tokens
        for label, st in stats.items():
            rows.append(f"| {references} | {tokens} + {references} x {tokens} | {label} | {protocol.spread(st)} | "
                        f"{stats['joint']['median'] / st['median']:.2f}x |")
            print(rows[-1], flush=True)
    head = (f"### Editing: reference KV cache (benchmarks/reference_cache.py), {protocol.machine_header(load_before)}\n\n"
            f"`python -m benchmarks.reference_cache --preset={args.preset} --image_size={args.image_size} "
            f"--references={args.references} --steps={args.steps} --num={args.num} --rounds={args.rounds}`: "
            f"{args.num} edits, {args.steps} steps with true CFG; seconds per generation, median (min-max).\n\n"
            "| references | image tokens | arm | seconds | joint / arm |\n|---|---|---|---|---|\n")
    table = head + "\n".join(rows) + "\n"
    print(table)
    protocol.append(table, load_before, args.max_load, args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
