"""PAROAttention on video attention: quality vs density, reorder on/off, and the XLA fallback's cost.

    python -m benchmarks.paro_video [--grid=16,8,8] [--num_text=32] [--heads=8] [--head_dim=64]
        [--block=64] [--densities=0.5,0.3,0.2] [--calib_samples=2] [--eval_samples=2]
        [--repeats=5] [--rounds=3] [--seed=0] [--impl=xla] [--dense=xla] [--dtype=float32]
        [--max_load=1.0] [--no-append]

Attention inputs with the structure of a trained video DiT's full-3D attention, without a
trained model: every head's queries and keys are one shared vector per head plus
per-token noise, rotated by the model's own 3D RoPE (`seedjax.models.rope`, axes (t, h, w))
at each token's position, so q_i . k_j = sum over channel pairs of a_p^2 cos(theta_p *
delta_p) + noise: a kernel in (delta t, delta h, delta w) whose width along each axis is set
by how much of the head's energy sits on that axis's fast-rotating channels (see `HEADS`:
temporal heads, spatial heads, row/column heads, local 3D heads, a diffuse head). This is
what RoPE-trained attention learns (aligned query/key phases); random q/k would have no
locality. Text tokens come first with unrotated random queries and keys. Values are a
per-head mean plus a field smooth in (t, h, w) plus noise, as video features are.

1. Calibration: `block_statistics` of the dense softmax maps of `--calib_samples` noise
   draws feed one `paro.Calibration` (1 layer, 1 timestep bucket); every plan below
   (densities x reorder on / natural order) comes from those statistics.
2. Quality on `--eval_samples` other noise draws: the 'paro' attention output (XLA path)
   against dense attention: cosine similarity and relative L2 error (the metric of
   `benchmarks.paro_quality.compare_attention`, reused) and PSNR, with the dense
   output's peak-to-peak range as the peak (`benchmarks.paro_quality.psnr` on outputs
   scaled to it).
3. Work and time: the share of dense block products the XLA fallback computes with the
   plan (`ParoPlan.computed_fraction`), next to what the former fallback computed (every
   query row padded to the widest row: with PARO's dense text rows, all of them), and the
   forward time of `paro_attention(impl=--impl)` (permutations included; default the XLA
   fallback, `triton` is the GPU kernel) against `jax.nn.dot_product_attention`
   (`--dense=xla`, or `cudnn`: cuDNN's fused flash attention, which needs `--dtype=bfloat16`
   or float16; q, k, v are cast to `--dtype` for the timings only, quality is always
   computed in float32 on the XLA path): every variant and dense once per round, rounds
   interleaved, each entry the median of `--repeats` runs per round then the median over
   rounds; wall time and process CPU time (all threads). The load average is read before
   and after.
A table is printed and appended to BENCHMARKS.md (unless --no-append, or unless the 1-minute
load average at the start was above --max_load).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import protocol
from benchmarks.paro_quality import FidelityMeter, compare_attention, psnr
from seedjax.kernels import paro
from seedjax.models.rope import apply_rope, rope_frequencies

AXES_SHARE = (0.25, 0.375, 0.375)  # of the head dim, for RoPE axes (t, h, w), as 16/24/24 of 64

# Per head: locality strength along (t, h, w). 0 = indifferent along that axis, larger =
# sharper (energy on the axis's fast channels). Cycled when there are more heads.
HEADS = (
    ("temporal", (0.0, 1.5, 1.5)),  # its own position in every frame
    ("frame", (2.0, 0.3, 0.3)),  # its own frame, broad within it
    ("local 3D", (0.75, 0.75, 0.75)),
    ("row", (2.0, 1.5, 0.0)),  # its own frame and row
    ("column", (2.0, 0.0, 1.5)),  # its own frame and column
    ("temporal local", (0.4, 1.5, 1.5)),
    ("diffuse", (0.15, 0.15, 0.15)),
    ("sharp 3D", (1.5, 1.5, 1.5)),
)


def axes_dims(head_dim: int) -> tuple[int, int, int]:
    t = 2 * round(head_dim * AXES_SHARE[0] / 2)
    h = 2 * round((head_dim - t) / 4)
    return t, h, head_dim - t - h


def video_positions(grid) -> np.ndarray:
    """[F*H*W, 3] (t, h, w) ids in row-major token order."""
    return np.stack(np.meshgrid(*map(np.arange, grid), indexing="ij"), -1).reshape(-1, 3).astype(np.float32)


def head_vectors(rng, heads: int, head_dim: int) -> np.ndarray:
    """[heads, head_dim]: per RoPE channel pair an amplitude set by the head's locality along
    the pair's axis, halving from pair to pair (RoPE's first pairs of an axis rotate fastest:
    they make the kernel narrow, the later ones only broaden it). With strength s the
    logit at distance 0 along the axis exceeds the far field by about 2 s^2."""
    dims = axes_dims(head_dim)
    out = np.zeros((heads, head_dim), np.float32)
    for h in range(heads):
        strength = HEADS[h % len(HEADS)][1]
        energy = np.concatenate([s ** 2 * math.sqrt(head_dim) * 0.5 ** np.arange(dim // 2)
                                 for dim, s in zip(dims, strength)])
        phase = rng.uniform(0, 2 * np.pi, energy.shape)  # any phase: q and k share it
        out[h] = (np.sqrt(energy)[:, None] * np.stack([np.cos(phase), np.sin(phase)], -1)).reshape(-1)
    return out


def video_qkv(rng, centers: np.ndarray, grid, num_text: int, noise: float, text_logit_std: float):
    """One sample's q, k, v [1, num_text + F*H*W, heads, head_dim] (float32)."""
    heads, head_dim = centers.shape
    visual = math.prod(grid)
    scale = np.linalg.norm(centers, axis=-1, keepdims=True) / math.sqrt(head_dim)  # per-channel size of c
    jitter = lambda: noise * scale * rng.standard_normal((visual, heads, head_dim))
    cos, sin = rope_frequencies(jnp.asarray(video_positions(grid)), axes_dims(head_dim))
    rotate = lambda x: np.asarray(apply_rope(jnp.asarray(x[None], jnp.float32), cos, sin))[0]
    q_vis, k_vis = rotate(centers + jitter()), rotate(centers + jitter())
    # Text: unrotated random vectors; a visual query's text logits have standard deviation
    # `text_logit_std`, so some text keys draw a share of its attention.
    q_txt = rng.standard_normal((num_text, heads, head_dim)) * scale
    k_txt = rng.standard_normal((num_text, heads, head_dim)) * (text_logit_std / np.maximum(scale, 1e-6))
    q = np.concatenate([q_txt, q_vis])
    k = np.concatenate([k_txt, k_vis])
    # Values as video features are: a per-head mean, a field that varies smoothly over
    # (t, h, w) (random Fourier features of the position), and per-token noise.
    positions = video_positions(grid)
    frequencies = rng.normal(0.0, 0.4, (3, 16))
    field = np.cos(positions @ frequencies + rng.uniform(0, 2 * np.pi, 16))  # [visual, 16]
    v_vis = (rng.standard_normal((1, heads, head_dim)) + np.einsum("nf,fhd->nhd", field, rng.standard_normal(
        (16, heads, head_dim)) / 2.0) + 0.5 * rng.standard_normal((visual, heads, head_dim)))
    v = np.concatenate([rng.standard_normal((num_text, heads, head_dim)), v_vis])
    return tuple(jnp.asarray(x[None], jnp.float32) for x in (q, k, v))


def dense_probs(q, k) -> jax.Array:
    """Softmax maps [H, L, L] of one sample (what the model's capture backend records)."""
    logits = jnp.einsum("qhd,khd->hqk", q[0], k[0]) / math.sqrt(q.shape[-1])
    return jax.nn.softmax(logits, axis=-1)


def calibrate(samples, layout: paro.SequenceLayout, heads: int, block: int) -> paro.Calibration:
    calib = paro.Calibration(layout, num_layers=1, num_heads=heads, bucket_edges=(), block_q=block, block_k=block)
    statistics_of = jax.jit(lambda q, k: paro.block_statistics(dense_probs(q, k), layout, block_q=block,
                                                               block_k=block))
    for q, k, _ in samples:
        calib.add(0, 0, np.asarray(statistics_of(q, k)))
    return calib


def fidelity(plan: paro.ParoPlan, samples) -> tuple[float, float, float]:
    """Mean cosine similarity, relative L2 error and PSNR (dB) of the plan's attention output
    against dense attention over `samples`; PSNR's peak is the dense output's range."""
    meter = FidelityMeter()
    compare = jax.jit(lambda q, k, v: compare_attention(q, k, v, layer_index=0, plan=plan, timestep=jnp.zeros(1),
                                                        meter=meter))
    sparse = jax.jit(lambda q, k, v: paro.paro_attention(q, k, v, plan, 0, jnp.zeros(1), impl="xla"))
    psnrs = []
    for q, k, v in samples:
        dense = np.asarray(compare(q, k, v), np.float64)
        peak = dense.max() - dense.min()
        psnrs.append(psnr(2 * dense / peak, 2 * np.asarray(sparse(q, k, v), np.float64) / peak))
    jax.effects_barrier()
    cos, rel = meter.result()
    return cos, rel, float(np.mean(psnrs))


def timed(fn, args, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of `repeats` runs (compiled and warm)."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def run(args) -> tuple[list[dict], dict]:
    grid, heads, block = tuple(args.grid), args.heads, args.block
    layout = paro.SequenceLayout(args.num_text, grid)
    rng = np.random.default_rng(args.seed)
    centers = head_vectors(rng, heads, args.head_dim)
    draw = lambda: video_qkv(rng, centers, grid, args.num_text, args.noise, args.text_logit_std)
    calib_samples = [draw() for _ in range(args.calib_samples)]
    eval_samples = [draw() for _ in range(args.eval_samples)]

    start = time.perf_counter()
    calib = calibrate(calib_samples, layout, heads, block)
    calib_seconds = time.perf_counter() - start

    variants = [(density, reorder) for density in args.densities for reorder in (True, False)]
    plans = {variant: calib.plan(variant[0], reorder=variant[1]) for variant in variants}
    rows = []
    for (density, reorder), plan in plans.items():
        cos, rel, db = fidelity(plan, eval_samples)
        rows.append(dict(density=density, reorder=reorder, overall=plan.density(visual_only=False),
                         computed=plan.computed_fraction(), before=plan.max_active_blocks(0) / plan.masks.shape[-1],
                         orders=[plan.orders[i] for i in plan.order_ids[0, 0]], cos=cos, rel=rel, psnr=db))

    # Timing: every variant and dense once per round, rounds interleaved.
    q, k, v = (x.astype(args.dtype) for x in eval_samples[0])
    dense = None if args.dense == "xla" else args.dense  # None: jax's default, the XLA path
    dense_fn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=dense))
    fns = {"dense": dense_fn}
    for variant, plan in plans.items():
        fns[variant] = jax.jit(lambda q, k, v, plan=plan: paro.paro_attention(q, k, v, plan, 0, jnp.zeros(1),
                                                                              impl=args.impl))
    for fn in fns.values():
        jax.block_until_ready(fn(q, k, v))  # compile and warm up
    times = {name: [] for name in fns}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, (q, k, v), args.repeats))
    load_after = os.getloadavg()[0]
    median = lambda name, i: statistics.median(t[i] for t in times[name])
    for row in rows:
        variant = (row["density"], row["reorder"])
        row.update(ms=1e3 * median(variant, 0), dense_ms=1e3 * median("dense", 0),
                   cpu_ratio=median(variant, 1) / median("dense", 1))
        row["speedup"] = row["dense_ms"] / row["ms"]
    context = dict(layout=layout, calib_seconds=calib_seconds, load=(load_before, load_after),
                   head_kinds=[HEADS[h % len(HEADS)][0] for h in range(heads)])
    return rows, context


def header(impl: str = "xla") -> str:
    """The table's header; the time columns name the timed implementation (`--impl`)."""
    return ("| visual density | overall density | reorder | orders chosen (per head) | xla computed fraction "
            f"| before the fix | attn cos sim | attn rel err | attn PSNR (dB) | {impl} time (ms) | dense (ms) | speedup "
            f"| CPU time {impl} / dense |")


HEADER = header()


def format_row(r: dict) -> str:
    return (f"| {r['density']:.2f} | {r['overall']:.2f} | {'yes' if r['reorder'] else 'no'} | "
            f"{' '.join(r['orders'])} | {r['computed']:.2f} | {r['before']:.2f} | {r['cos']:.4f} | {r['rel']:.4f} | "
            f"{r['psnr']:.2f} | {r['ms']:.1f} | {r['dense_ms']:.1f} | {r['speedup']:.2f}x | {r['cpu_ratio']:.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]
    floats = lambda s: [float(x) for x in s.split(",") if x]
    p.add_argument("--grid", type=ints, default=[16, 8, 8], help="frames,height,width of the visual tokens")
    p.add_argument("--num_text", type=int, default=32)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--densities", type=floats, default=[0.5, 0.3, 0.2])
    p.add_argument("--noise", type=float, default=0.5, help="per-token noise on q and k, relative to the head vector")
    p.add_argument("--text_logit_std", type=float, default=2.5)
    p.add_argument("--calib_samples", type=int, default=2)
    p.add_argument("--eval_samples", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--impl", default="xla", choices=["auto", "triton", "mosaic", "xla"],
                   help="block-sparse implementation of the timed PARO runs (quality always uses xla)")
    p.add_argument("--dense", default="xla", choices=["xla", "cudnn"],
                   help="dense baseline: jax.nn.dot_product_attention's implementation")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="q, k, v dtype of the timings (cudnn needs bfloat16 or float16)")
    p.add_argument("--no-append", dest="append", action="store_false")
    protocol.add_max_load(p)
    args = p.parse_args()
    if len(args.grid) != 3 or min(args.grid) < 1:
        p.error(f"--grid must be three positive sizes (frames,height,width), got {args.grid}")
    if any(not 0 < d <= 1 for d in args.densities):
        p.error(f"--densities must lie in (0, 1], got {args.densities}")
    if args.dense == "cudnn" and args.dtype == "float32":
        p.error("--dense=cudnn needs --dtype=bfloat16 or float16 (cuDNN's flash attention has no float32)")
    load_before = protocol.begin(args.max_load, not args.append)

    rows, ctx = run(args)
    layout = ctx["layout"]
    blocks = -(-layout.length // args.block)
    print(header(args.impl))
    print("|" + "---|" * 13)
    for row in rows:
        print(format_row(row))
    load = "load average %.1f before the timings, %.1f after" % ctx["load"]
    print(f"{os.cpu_count()} CPU cores, {load}; calibration {ctx['calib_seconds']:.1f} s")
    if args.append:
        command = "python -m benchmarks.paro_video " + " ".join(
            f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
            if k not in ("append", "max_load"))
        precision = ("float32" if (args.impl, args.dense, args.dtype) == ("xla", "xla", "float32") else
                     f"quality in float32, timings in {args.dtype} ({args.impl} PARO path, {args.dense} dense)")
        lines = [
            "", f"## PAROAttention on video attention (benchmarks/paro_video.py), {time.strftime('%Y-%m-%d')}", "",
            f"Command: `{command}`", "",
            f"Machine: {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); "
            f"{protocol.machine_header(load_before)}; {load}. Attention: "
            f"{args.num_text} text tokens + a {'x'.join(map(str, layout.grid))} (frames x height x width) video = "
            f"{layout.length} tokens, {args.heads} heads x {args.head_dim}, {args.block}-token blocks ({blocks} x "
            f"{blocks}, the text in block 0), batch 1, {precision}. Heads (q, k from 3D RoPE of positions + noise): "
            f"{', '.join(ctx['head_kinds'])}. Calibration on {args.calib_samples} noise draws "
            f"({ctx['calib_seconds']:.1f} s), quality on {args.eval_samples} others. Times: forward, medians of "
            f"{args.rounds} interleaved rounds of {args.repeats} runs; 'before the fix' = the share of block "
            f"products of the former XLA fallback (every row padded to the widest, i.e. a dense text row).", "",
            header(args.impl), "|" + "---|" * 13,
        ] + [format_row(r) for r in rows]
        protocol.append("\n".join(lines) + "\n", load_before, args.max_load)


if __name__ == "__main__":
    main()
