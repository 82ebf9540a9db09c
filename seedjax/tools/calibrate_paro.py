"""Calibrate PAROAttention plans for a trained text-to-image or text-to-video DiT.

    python -m seedjax.tools.calibrate_paro --workdir=RUN --density=0.3
        [--out=RUN/paro/plan_d0.30.safetensors] [--num_prompts=4] [--num_steps=<config>]
        [--early_buckets=3] [--block=64] [--quant_weight=0.25] [--no_reorder] [--frames=<config>] [--seed=0]

Loads the run's config and latest checkpoint (EMA parameters when the run samples from
them), samples `--num_prompts` training-split captions with the run's sampler while a
capture backend records block statistics of every attention layer's maps, and writes the
plans (see `seedjax.kernels.paro`). Timestep buckets: each of the first `--early_buckets`
sampling steps gets its own bucket, the remaining steps share one.

Every attention layer (the model's `layer_index`) is calibrated with the token layout it is
called with, and layers of one layout make one plan file:
- image runs (input.key=image): every MMDiT block attends over text + the (h, w) grid: one plan;
- video runs (input.key=video, `--frames` frames, default the config's): block i's spatial
  attention is layer 2i, its temporal one 2i+1. 'decoupled': the spatial layers attend per frame
  over text + the frame's (h, w) grid (one plan; the temporal layers are not PARO's); 'full_3d':
  the spatial layers attend over text + the (frames, h, w) grid, the temporal ones over the
  visual tokens alone: two plans, `--out` and `<out stem>_visual_<f>x<h>x<w>.safetensors`.
A plan holds every layer index up to the model's last; the layers of another layout keep the
natural token order and every block (dense), and `info['layers']` lists the calibrated ones.

To sample with a plan, give the model `attention_backend='paro'` and the attention kwargs
{'plan': path, 'timestep': t} (`sample` below does this). Calibrate at the frame count and the
number of shots you sample with: a plan is made for one sequence layout.
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
from seedjax.models.attention import TokenLayout, register_backend
from seedjax.models.geometry import Geometry
from seedjax.train.generation import with_first_frame

CAPTURE_BACKEND = "paro_capture_per_layer"


def load_model(workdir: str, frames: int = 0):
    """(generator with the run's sampling parameters, config) of an image or video run;
    `frames` > 0 samples a video run's clips at that many frames."""
    bundle = inference.load(workdir)
    config = bundle.config
    if frames:
        if config.input.key != "video":
            raise ValueError(f"--frames is for video runs; this run has input.key={config.input.key!r}")
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.data.video.num_frames = int(frames)
    token_grid(config)
    return bundle.model, config


def with_backend(model, config, backend: str):
    """The same parameters in a model whose DiT uses attention backend `backend`."""
    config = config.copy_and_resolve_references()
    config.model.attention_backend = backend
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: generator.build(config, nnx.Rngs(0), model.guidance_embedded)))
    return nnx.merge(graphdef, nnx.state(model))


def token_grid(config) -> tuple[int, ...]:
    """The visual token grid of the run's samples: (h, w) for images, (frames, h, w) for videos."""
    if config.input.key not in ("image", "video"):
        raise ValueError("calibrate_paro: only pixel-space runs (config.input.key='image' or 'video') are supported "
                         f"so far, got {config.input.key!r}")
    if config.model.get("scan_layers", False):
        raise ValueError("calibrate_paro: PARO plans are per layer and a scanned layer stack has no static layer "
                         "index; set model.scan_layers=false")
    geometry = Geometry.of(config)
    return geometry.grid if config.input.key == "video" else geometry.grid_hw


def sampler_for(config, num_steps: int = 0) -> Sampler:
    s = config.sampling
    return Sampler.make(num_steps or s.num_steps, s.shift, s.guidance_scale)


def sample(model, config, prompts: dict, rng, *, num_steps: int = 0, attention_kwargs=None):
    """Images [N, H, W, C] (video runs: clips [N, F, H, W, C]) in [-1, 1] for `prompts` with the
    run's sampler; `attention_kwargs(t)` -> dict of backend kwargs for velocity evaluations at
    flow times t [B] (None for dense)."""
    geometry = Geometry.of(config)
    if model.is_video:  # image-to-video runs condition on the prompts' first frames
        prompts = with_first_frame(prompts, config, geometry)
    x = jnp.clip(sampler_for(config, num_steps).generate(model, prompts, geometry, rng, attention=attention_kwargs),
                 -1.0, 1.0)
    return x if model.is_video else x[:, 0]


def bucket_edges(config, num_steps: int, early_buckets: int) -> tuple[float, ...]:
    """Edges between the first `early_buckets` sampling times and the next ones."""
    sigmas = np.asarray(sampler_for(config, num_steps).sigmas)
    k = min(early_buckets, len(sigmas) - 2)
    return tuple(float((sigmas[i] + sigmas[i + 1]) / 2) for i in range(max(k, 0)))


def sequence_layout(layout: TokenLayout) -> paro.SequenceLayout:
    grid = None if layout is None else layout.visual_grid
    if grid is None:
        raise ValueError("paro calibration: the model must pass a token layout with its grid")
    return paro.SequenceLayout(layout.num_text, tuple(grid))


class LayerCalibrations:
    """PARO block statistics per attention layer, each layer with the layout it is called with.

    The capture backend (`CAPTURE_BACKEND`) opens a one-layer `paro.Calibration` for a layer the
    first time it traces it; `plans` then makes one `paro.ParoPlan` per distinct layout."""

    def __init__(self, bucket_edges, *, block: int = 64, threshold: float = 1e-3, sparse_fraction: float = 0.9):
        self.bucket_edges = tuple(float(e) for e in bucket_edges)
        self.block, self.threshold, self.sparse_fraction = block, threshold, sparse_fraction
        self.layers: dict[int, paro.Calibration] = {}

    def for_call(self, layer_index, layout: paro.SequenceLayout, num_heads: int) -> paro.Calibration:
        if not isinstance(layer_index, (int, np.integer)):
            raise ValueError(f"paro calibration: the model must pass a static int layer_index, got {layer_index!r}")
        calib = self.layers.get(int(layer_index))
        if calib is None:
            calib = self.layers[int(layer_index)] = paro.Calibration(
                layout, 1, num_heads, self.bucket_edges, block_q=self.block, block_k=self.block,
                threshold=self.threshold, sparse_fraction=self.sparse_fraction)
        elif calib.layout != layout or calib.num_heads != num_heads:
            raise ValueError(f"paro calibration: attention layer {layer_index} was called with {layout} and "
                             f"{num_heads} heads, earlier with {calib.layout} and {calib.num_heads} heads")
        return calib

    def layouts(self) -> list[paro.SequenceLayout]:
        """The distinct layouts, in the order of their first layer."""
        return list(dict.fromkeys(self.layers[i].layout for i in sorted(self.layers)))

    def plans(self, density: float, *, quant_weight: float = 0.25, reorder: bool = True) -> list[paro.ParoPlan]:
        """One plan per layout (see `layouts`), each covering layer indices 0 .. the last layer."""
        if not self.layers:
            raise ValueError("paro calibration: no attention layer was captured (does the model use the backend?)")
        num_layers = max(self.layers) + 1
        out = []
        for layout in self.layouts():
            own = {i: c.plan(density, quant_weight=quant_weight, reorder=reorder)
                   for i, c in sorted(self.layers.items()) if c.layout == layout}
            out.append(_merge_layers(own, num_layers, dict(
                density=density, quant_weight=quant_weight, reorder=reorder, threshold=self.threshold,
                sparse_fraction=self.sparse_fraction)))
        return out

    def plan(self, density: float, **kwargs) -> paro.ParoPlan:
        """The plan of a model whose attention layers all share one layout (image runs, decoupled video)."""
        layouts = self.layouts()
        if len(layouts) != 1:
            raise ValueError(f"paro calibration: the attention layers have {len(layouts)} layouts {layouts}; "
                             f"use plans() (one plan per layout)")
        return self.plans(density, **kwargs)[0]


def _merge_layers(own: dict[int, paro.ParoPlan], num_layers: int, info: dict) -> paro.ParoPlan:
    """One plan over layer indices 0..num_layers-1 from one-layer plans of one layout; the
    layers not in `own` (another layout, or no attention through the backend) stay dense."""
    first = next(iter(own.values()))
    layout, shape = first.layout, dict(first.model_shape, num_layers=num_layers)
    natural = layout.orders.index("hw" if len(layout.grid) == 2 else "fhw")
    order_ids = np.full((num_layers, *first.order_ids.shape[1:]), natural, np.int32)
    masks = np.ones((num_layers, *first.masks.shape[1:]), bool)
    maps = np.zeros((num_layers, len(first.bucket_edges) + 1), np.int64)
    scores = [None] * (num_layers * maps.shape[1])
    for i, p in own.items():
        order_ids[i], masks[i] = p.order_ids[0], p.masks[0]
        maps[i] = p.info["maps_per_bucket"][0]
        scores[i * maps.shape[1]:(i + 1) * maps.shape[1]] = p.info["scores"]
    info = dict(info, layers=sorted(own), maps_per_bucket=maps.tolist(), scores=scores)
    return paro.ParoPlan(shape, first.bucket_edges, order_ids, masks, info)


def capture_per_layer(q, k, v, *, key_mask=None, layer_index=None, layout=None, calibrations: LayerCalibrations,
                      timestep):
    """Dense attention that adds the block statistics of its maps to the calibration of its
    own layer (`paro.capture_backend` on that layer's one-layer calibration)."""
    calib = calibrations.for_call(layer_index, sequence_layout(layout), q.shape[2])
    # The video DiT's per-frame spatial calls fold frames into the batch (B * F rows, sample-major)
    # but pass the per-sample flow times [B]: every frame takes its own sample's time.
    t = jnp.asarray(timestep)
    if t.ndim == 1 and t.shape[0] not in (1, q.shape[0]) and q.shape[0] % t.shape[0] == 0:
        t = jnp.repeat(t, q.shape[0] // t.shape[0])
    return paro.capture_backend(q, k, v, key_mask=key_mask, layer_index=0, layout=layout, calibration=calib,
                                timestep=t)


register_backend(CAPTURE_BACKEND, capture_per_layer, overwrite=True)  # overwrite: `python -m` imports it twice


def calibrate(model, config, prompts: dict, rng, *, num_steps: int = 0, early_buckets: int = 3, block: int = 64,
              threshold: float = 1e-3, sparse_fraction: float = 0.9) -> LayerCalibrations:
    """Sample `prompts` while recording per-layer block statistics of the attention maps."""
    token_grid(config)
    calibs = LayerCalibrations(bucket_edges(config, num_steps, early_buckets), block=block, threshold=threshold,
                               sparse_fraction=sparse_fraction)
    capture = with_backend(model, config, CAPTURE_BACKEND)
    graphdef, state = nnx.split(capture)
    run = jax.jit(lambda state, prompts, rng: sample(
        nnx.merge(graphdef, state), config, prompts, rng, num_steps=num_steps,
        attention_kwargs=lambda t: {"calibrations": calibs, "timestep": t}))
    jax.block_until_ready(run(state, prompts, rng))
    jax.effects_barrier()  # all host callbacks delivered
    return calibs


PROMPT_KEYS = ("tokens", "text_mask", "target_size", "shot_tokens", "shot_mask", "frame_shot")


def calibration_prompts(config, num: int, seed: int) -> dict:
    """Training-split captions (video runs: every shot's, and the clips for image-to-video runs)."""
    batch = data_pipelines.make_eval_batch(config.data, num=num, seed=seed, split="train")
    keys = PROMPT_KEYS + (("video",) if config.input.key == "video" and config.sampling.get("i2v", False) else ())
    return {k: jnp.asarray(batch[k]) for k in keys if k in batch}


def summarize(plan: paro.ParoPlan) -> str:
    s = plan.model_shape
    layers = plan.info.get("layers", list(range(s["num_layers"])))
    visual = ~paro.text_blocks(plan.layout, s["block_q"], s["block_k"])
    masks = plan.masks[layers]
    lines = [f"plan: {s['num_text']} text tokens + grid {'x'.join(map(str, s['grid']))}; attention layers "
             f"{', '.join(map(str, layers))} of {s['num_layers']} x {len(plan.bucket_edges) + 1} buckets "
             f"(edges {', '.join(f'{e:.3f}' for e in plan.bucket_edges)}) x {s['num_heads']} heads; "
             f"blocks {s['block_q']}; visual density {masks[..., visual].mean():.3f}, overall {masks.mean():.3f}"]
    counts = Counter(plan.orders[i] for i in plan.order_ids[layers].reshape(-1))
    lines.append("orders chosen: " + ", ".join(f"{o} {counts[o]}" for o in plan.orders))
    return "\n".join(lines)


def plan_paths(out: str, plans: list[paro.ParoPlan]) -> list[str]:
    """`out` for the first plan; `<stem>_<text|visual>_<grid><ext>` for the others."""
    stem, ext = os.path.splitext(out)
    tag = lambda p: (f"text{p.layout.num_text}" if p.layout.num_text else "visual") + "_" + "x".join(
        map(str, p.layout.grid))
    return [out] + [f"{stem}_{tag(p)}{ext or '.safetensors'}" for p in plans[1:]]


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
    p.add_argument("--frames", type=int, default=0, help="video runs: frames per clip (default: the run's config)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse(argv)
    try:
        if not 0.0 < args.density <= 1.0:
            raise ValueError(f"--density must be in (0, 1], got {args.density}")
        if args.num_prompts < 1 or args.block < 1 or args.early_buckets < 0 or args.frames < 0:
            raise ValueError("--num_prompts and --block must be positive, --early_buckets and --frames >= 0")
        model, config = load_model(args.workdir, args.frames)
    except (ValueError, FileNotFoundError) as e:
        print(f"calibrate_paro: error: {e}", file=sys.stderr)
        return 2
    rng = jax.random.PRNGKey(args.seed)
    prompts = calibration_prompts(config, args.num_prompts, args.seed)
    calibs = calibrate(model, config, prompts, rng, num_steps=args.num_steps, early_buckets=args.early_buckets,
                       block=args.block)
    plans = calibs.plans(args.density, quant_weight=args.quant_weight, reorder=not args.no_reorder)
    out = args.out or os.path.join(args.workdir, "paro", f"plan_d{args.density:.2f}.safetensors")
    for plan, path in zip(plans, plan_paths(out, plans)):
        plan.info["workdir"] = os.path.abspath(args.workdir)
        plan.info["num_prompts"] = args.num_prompts
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        plan.save(path)
        print(summarize(plan))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
