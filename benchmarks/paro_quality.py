"""PAROAttention quality on a trained DiT: sparse vs dense attention and samples.

    python -m benchmarks.paro_quality --workdir=RUN [--block=16] [--densities=0.5,0.3,0.2]
        [--calib_prompts=4] [--eval_prompts=32] [--num_steps=0] [--max_load=1.0] [--no-append]

1. Calibrate once on `--calib_prompts` training-split captions (`calibrate_paro`); the
   statistics do not depend on the density, so every plan below comes from them.
2. For each density, with and without reordering (the natural row-major order), and with
   INT8 Q.K + P.V at the first density:
   - attention fidelity: along the dense sampling trajectory of `--eval_prompts` held-out
     (test-split) captions, every layer's attention output is computed both densely and
     with the plan from the same q, k, v; reported are the mean cosine similarity and the
     relative L2 error (||sparse - dense|| / ||dense||) over layers, steps and samples;
   - end to end: the same prompts and noise sampled with the plan; PSNR of the images
     against the dense sampler's, and prompt accuracy of the independent digit classifier,
     each with its standard error over the prompts; and, per density, reorder minus no
     reorder paired over the same prompts (mean +- standard error of the differences).
INT8 runs use the XLA emulation of the kernel's quantization (identical INT8 products).
A table is printed and appended to BENCHMARKS.md (unless --no-append, or unless the 1-minute
load average at the start was above --max_load).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import protocol
from seedjax.kernels import paro
from seedjax.models.attention import register_backend
from seedjax.tools import calibrate_paro as tool



class FidelityMeter:
    """Host-side sums of per-sample cosine similarity and relative error."""

    def __init__(self):
        self.cos, self.rel, self.count = 0.0, 0.0, 0

    def add(self, cos, rel):
        self.cos += float(np.sum(cos))
        self.rel += float(np.sum(rel))
        self.count += int(np.size(cos))

    def result(self) -> tuple[float, float]:
        return self.cos / max(self.count, 1), self.rel / max(self.count, 1)


@register_backend("paro_compare")
def compare_attention(q, k, v, *, key_mask=None, layer_index=None, layout=None, plan, timestep, meter,
                      int8=False):
    """Dense attention (returned, so the trajectory stays dense) compared with the plan's."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    dense = jax.nn.dot_product_attention(q, k, v, mask=mask)
    sparse = paro.paro_attention(q, k, v, plan, layer_index, timestep, key_mask=key_mask, impl="xla",
                                 int8_qk=int8, int8_pv=int8)
    d, s = dense.astype(jnp.float32), sparse.astype(jnp.float32)
    norm = lambda x: jnp.sqrt(jnp.sum(x * x, axis=(1, 2, 3)))
    cos = jnp.sum(d * s, axis=(1, 2, 3)) / (norm(d) * norm(s))
    rel = norm(s - d) / norm(d)
    jax.debug.callback(meter.add, cos, rel)
    return dense


def correct(images: np.ndarray, batch: dict, image_size: int) -> np.ndarray:
    """Per image: does the independent digit classifier read the prompted digit (float 0/1; nan without labels)."""
    from seedjax.eval.judges.classifier import get_classifier

    if "label" not in batch:
        return np.full(len(images), np.nan)
    return (get_classifier(image_size).predict(images) == np.asarray(batch["label"])).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR of images in [-1, 1] (peak-to-peak 2)."""
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error over prompts."""
    return float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(len(x)))


def paired(rows: list[dict]) -> list[str]:
    """Reorder minus no reorder at each density, paired over the same prompts: mean +- standard error."""
    out = []
    for r in rows:
        other = next((o for o in rows if o["density"] == r["density"] and not o["reorder"] and not o["int8"]), None)
        if r["reorder"] and not r["int8"] and other is not None:
            dp, sp = mean_se(r["psnr_each"] - other["psnr_each"])
            da, sa = mean_se(r["correct_each"] - other["correct_each"])
            out.append(f"| {r['density']:.2f} | {dp:+.2f} +- {sp:.2f} | {da:+.3f} +- {sa:.3f} |")
    return out


def run(args) -> tuple[list[dict], dict]:
    import data_pipelines

    model, config = tool.load_model(args.workdir)
    rng = jax.random.PRNGKey(args.seed)
    calib_prompts = tool.calibration_prompts(config, args.calib_prompts, args.seed)
    t0 = time.perf_counter()
    calib = tool.calibrate(model, config, calib_prompts, rng, num_steps=args.num_steps,
                           early_buckets=args.early_buckets, block=args.block)
    calib_seconds = time.perf_counter() - t0

    eval_batch = data_pipelines.make_eval_batch(config.data, num=args.eval_prompts, seed=args.seed + 1, split="test")
    prompts = {k: jnp.asarray(eval_batch[k]) for k in ("tokens", "text_mask")}
    sample_rng = jax.random.fold_in(rng, 1)

    def sampler(backend, kwargs_of_t):
        m = tool.with_backend(model, config, backend)
        from flax import nnx

        graphdef, state = nnx.split(m)
        fn = jax.jit(lambda state, prompts, rng: tool.sample(nnx.merge(graphdef, state), config, prompts, rng,
                                                             num_steps=args.num_steps, attention_kwargs=kwargs_of_t))
        return np.asarray(jax.block_until_ready(fn(state, prompts, sample_rng)))

    dense_images = sampler("dense", None)
    dense_accuracy = mean_se(correct(dense_images, eval_batch, config.data.image_size))
    rows = []
    variants = [(d, reorder, False) for d in args.densities for reorder in (True, False)]
    variants += [(args.densities[0], True, True)]
    for density, reorder, int8 in variants:
        plan = calib.plan(density, quant_weight=args.quant_weight, reorder=reorder)
        meter = FidelityMeter()
        sampler("paro_compare", lambda t, plan=plan, meter=meter, int8=int8: dict(
            plan=plan, timestep=t, meter=meter, int8=int8))
        jax.effects_barrier()
        cos, rel = meter.result()
        images = sampler("paro", lambda t, plan=plan, int8=int8: dict(plan=plan, timestep=t, impl="xla",
                                                                      int8_qk=int8, int8_pv=int8))
        psnr_each, correct_each = psnr(images, dense_images), correct(images, eval_batch, config.data.image_size)
        rows.append(dict(density=density, overall=plan.density(visual_only=False), reorder=reorder, int8=int8,
                         cos=cos, rel=rel, psnr=mean_se(psnr_each), accuracy=mean_se(correct_each),
                         psnr_each=psnr_each, correct_each=correct_each))
        print(format_row(rows[-1]), flush=True)
    context = dict(config=config, dense_accuracy=dense_accuracy,
                   calib_seconds=calib_seconds, plan=calib.plan(args.densities[0]))
    return rows, context


HEADER = ("| visual density | overall density | reorder | INT8 | attn cos sim | attn rel err "
          "| PSNR vs dense (dB, +- s.e.) | prompt acc (+- s.e.) |")
PAIRED_HEADER = "| visual density | PSNR, reorder - no reorder (dB) | prompt acc, reorder - no reorder |"


def format_row(r: dict) -> str:
    return (f"| {r['density']:.2f} | {r['overall']:.2f} | {'yes' if r['reorder'] else 'no'} | "
            f"{'Q.K+P.V' if r['int8'] else '-'} | {r['cos']:.4f} | {r['rel']:.4f} | "
            f"{r['psnr'][0]:.2f} +- {r['psnr'][1]:.2f} | {r['accuracy'][0]:.3f} +- {r['accuracy'][1]:.3f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--densities", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.3, 0.2])
    p.add_argument("--calib_prompts", type=int, default=4)
    p.add_argument("--eval_prompts", type=int, default=32)
    p.add_argument("--num_steps", type=int, default=0)
    p.add_argument("--early_buckets", type=int, default=3)
    p.add_argument("--quant_weight", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", dest="append", action="store_false")
    protocol.add_max_load(p)
    args = p.parse_args()
    load_before = protocol.begin(args.max_load, not args.append)

    rows, ctx = run(args)
    config, plan = ctx["config"], ctx["plan"]
    grid = tool.token_grid(config)
    per_row = -(-(grid[0] * grid[1]) // args.block)
    steps = args.num_steps or config.sampling.num_steps
    dense = "{:.3f} +- {:.3f}".format(*ctx["dense_accuracy"])
    print(f"dense sampler prompt accuracy {dense}; calibration {ctx['calib_seconds']:.0f} s")
    print(tool.summarize(plan))
    print("\n".join([PAIRED_HEADER, "|---|---|---|", *paired(rows)]))
    if args.append:
        command = "python -m benchmarks.paro_quality " + " ".join(
            f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
            if k not in ("append", "max_load"))
        lines = [
            "", f"## PAROAttention quality (benchmarks/paro_quality.py), {time.strftime('%Y-%m-%d')}", "",
            f"Command: `{command}`", "",
            f"Machine: {jax.devices()[0].platform}; {protocol.machine_header(load_before)}.", "",
            f"Model: `{args.workdir}` (MMDiT {config.model.depth_double}+{config.model.depth_single} blocks, "
            f"{config.model.num_heads} heads x {config.model.head_dim}), {grid[0]}x{grid[1]} image tokens + "
            f"{config.data.max_text_len} text tokens, blocks of {args.block} ({per_row} blocks per visual row), "
            f"{steps} sampling steps, CFG {config.sampling.guidance_scale}. Calibration: {args.calib_prompts} "
            f"training prompts, {ctx['calib_seconds']:.0f} s on CPU; evaluation: {args.eval_prompts} held-out "
            f"prompts. Dense sampler prompt accuracy: {dense}. Standard errors over the prompts.", "",
            f"Plan at density {args.densities[0]}: " + tool.summarize(plan).replace("\n", "; "), "",
            HEADER, "|" + "---|" * 8,
        ] + [format_row(r) for r in rows] + [
            "", "Paired over the same prompts and noise (mean +- standard error of the per-prompt differences):", "",
            PAIRED_HEADER, "|---|---|---|", *paired(rows)]
        protocol.append("\n".join(lines) + "\n", load_before, args.max_load)


if __name__ == "__main__":
    main()
