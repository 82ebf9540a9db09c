"""Generate ODE pairs (noise, model sample) with a trained run and store them as a dataset (ADP's data).

    python -m seedjax.tools.ode_pairs --init_from=runs/qs/dmdo --workdir=runs/qs/ode_pairs --num=4096 \
        [--batch=256] [--seed=0] [--split=train] [--num_shards=4] [--steps=N] [--guidance=G]

`--init_from` is any stage's workdir: the teacher (pretrain: its Euler/CFG sampler) or a
distilled student (its few-step grid). Prompts come from that run's training data
(`config.data`, split `--split`); each pair is the sampler's exact input noise and output.

The output is a shard directory of `data_pipelines` (ArrayRecord, kind 'latents'): each record's
`latent` is concat([x0, noise], axis=-1), [H, W, 2C] float32 (pixels or latents, the run's
`config.input`), with the caption and the source's labels. Train on it with
`config.data.source='shards'`, `config.data.path=<this dir>`; `seedjax.distill.teachers.split_pairs` takes a batch
apart again. `metadata.json` records how the pairs were made under 'ode_pairs'. Re-running
with the same arguments on a finished directory does nothing. Exit codes: 0 written (or already
there), 2 bad arguments or source run.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.core.pipeline import open_source
from data_pipelines.core.samples import BadSample
from data_pipelines.core.shards import ShardWriter
from seedjax import cli, inference
from seedjax.inference.bundle import Bundle
from seedjax.models.codec import require_pixel_space

log = logging.getLogger("seedjax.ode_pairs")

LABEL_KEYS = ("label", "scene_digit", "scene_color", "scene_box", "scene_count")


def ode_solution(bundle: Bundle, batch: dict, noise: jax.Array) -> jax.Array:
    """The bundle's sampler applied to the given noise tokens [B, N, D] -> final tokens."""
    sampler = bundle.sampler
    return sampler(sampler.velocity(bundle.model, batch, bundle.geometry), noise)


def prompts(config, split: str, num: int, seed: int) -> list[dict]:
    """`num` raw samples (caption + labels) of the run's training data, in a seeded order."""
    source = open_source(config.data.source, config.data.path, config.data, split=split, seed=seed)
    order = np.random.default_rng(seed).permutation(len(source))
    rows = []
    passes = -(-num // len(order)) + 1  # wrap around as often as num needs, with a pass to spare for bad samples
    for position in range(passes * len(order)):
        try:
            raw = source.load(int(order[position % len(order)]), position)
        except BadSample:
            continue
        if isinstance(raw.get("caption"), str) and raw["caption"].strip():
            rows.append({"caption": raw["caption"], **{k: raw[k] for k in LABEL_KEYS if k in raw}})
        if len(rows) == num:
            return rows
    raise ValueError(f"{source.name}: only {len(rows)} usable prompts for --num={num}")


def write_pairs(bundle: Bundle, out_dir: str, *, num: int, batch: int, seed: int, split: str, num_shards: int) -> dict:
    config = bundle.config
    geo = bundle.geometry
    h, w, c = geo.height, geo.width, geo.channels
    rows = prompts(config, split, num, seed)
    solve = jax.jit(lambda b, noise: geo.images_of(ode_solution(bundle, b, geo.tokens(noise))))
    writer = ShardWriter(out_dir, num_shards)
    key = jax.random.key(seed)
    for start in range(0, num, batch):
        chunk = rows[start:start + batch]
        size = len(chunk)
        captions = [r["caption"] for r in chunk] + [chunk[-1]["caption"]] * (batch - size)  # one compiled shape
        noise = jax.random.normal(jax.random.fold_in(key, start), (batch, h, w, c), jnp.float32)
        x0 = np.asarray(solve(bundle.prompts(captions), noise))
        noise = np.asarray(noise)
        for i, row in enumerate(chunk):
            fields = {"latent": np.concatenate([x0[i], noise[i]], axis=-1).astype(np.float32),
                      "target_size": np.asarray([h, w], np.int32), "caption": row["caption"],
                      **{k: row[k] for k in LABEL_KEYS if k in row}}
            writer.write(fields, (h, w))
        log.info("ode_pairs: %d / %d", min(start + batch, num), num)
    return writer.close({
        "kind": "latents", "source": f"ode_pairs({bundle.workdir})", "channels": c,
        "scene_labels": "scene_digit" in rows[0], "tags": [], "shapes": {"latent": [h, w, 2 * c]},
        "counts": {"read": num, "written": num, "skipped": {}},
        "ode_pairs": {"run": os.path.abspath(bundle.workdir), "stage": config.stage, "nfe": bundle.nfe,
                      "num": num, "seed": seed, "split": split, "channels": c,
                      "layout": "latent = concat([x0, noise], axis=-1)"},
    })


def _finished(out_dir: str, wanted: dict) -> bool:
    try:
        with open(os.path.join(out_dir, "metadata.json")) as f:
            made = json.load(f).get("ode_pairs", {})
    except (OSError, json.JSONDecodeError):
        return False
    return all(made.get(k) == v for k, v in wanted.items())


@cli.entry("seedjax.tools.ode_pairs")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.tools.ode_pairs", __doc__)
    parser.add_argument("--init_from", required=True, help="workdir of the run that generates the pairs")
    parser.add_argument("--workdir", required=True, help="output shard directory")
    parser.add_argument("--num", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train")
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--steps", type=int, default=0, help="override the run's sampling steps")
    parser.add_argument("--guidance", type=float, default=0.0, help="override the run's guidance scale")
    args = parser.parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for name, value in (("num", args.num), ("batch", args.batch), ("num_shards", args.num_shards)):
        if value < 1:
            print(f"ode_pairs: --{name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    wanted = {"run": os.path.abspath(args.init_from), "num": args.num, "seed": args.seed, "split": args.split}
    if _finished(args.workdir, wanted):
        print(f"ode_pairs: {args.workdir} already holds these {args.num} pairs", file=sys.stderr)
        return 0
    try:
        bundle = inference.load(args.init_from).with_sampling(args.steps, args.guidance)
        require_pixel_space(bundle.config, "ode_pairs")
        header = write_pairs(bundle, args.workdir, num=args.num, batch=min(args.batch, args.num), seed=args.seed,
                             split=args.split, num_shards=args.num_shards)
    except ValueError as e:
        print(f"ode_pairs: {e}", file=sys.stderr)
        return 2
    print(f"ode_pairs: wrote {header['num_records']} pairs ({header['ode_pairs']['stage']} at "
          f"{header['ode_pairs']['nfe']} NFE) to {args.workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
