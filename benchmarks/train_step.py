"""seedjax vs diffusers' FluxTransformer2DModel (PyTorch): one training step, side by side.

    python -m benchmarks.train_step [--sizes=quickstart,large] [--steps=10] [--no-append]

Both sides train the same MMDiT configuration (same shapes, float32, AdamW, velocity MSE,
same batch and token counts) on random inputs, in one process on one machine. Printed:
analytic TFLOPs per step, the float32 matmul peak of each framework measured in the same run,
MFU for both, and the seedjax / PyTorch step-time ratio (median of `--steps` steps after
warm-up). A row per size is appended to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

SIZES = {
    # quickstart: the MMDiT of experiments/quickstart/pretrain.py (16 image + 32 text tokens)
    "quickstart": dict(heads=3, head_dim=32, double=2, single=2, img_tokens=16, txt_tokens=32, in_ch=16, batch=64),
    # the larger point: hidden 512, 256 image tokens, batch 32
    "large": dict(heads=8, head_dim=64, double=2, single=4, img_tokens=256, txt_tokens=32, in_ch=16, batch=32),
}


def seedjax_config(s: dict):
    from seedjax.schema.models import mmdit_config

    cfg = mmdit_config()
    cfg.num_heads, cfg.head_dim = s["heads"], s["head_dim"]
    cfg.depth_double, cfg.depth_single = s["double"], s["single"]
    cfg.in_channels = s["in_ch"]
    cfg.text_dim = cfg.pooled_dim = s["heads"] * s["head_dim"]
    spatial = s["head_dim"] * 3 // 8  # (8, 12, 12) for head_dim 32, as in the quickstart
    cfg.axes_dims_rope = (s["head_dim"] - 2 * spatial, spatial, spatial)
    return cfg


def grid_of(n: int) -> tuple[int, int]:
    side = int(round(n**0.5))
    assert side * side == n
    return side, side


def time_seedjax(s: dict, steps: int) -> tuple[list[float], float]:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from seedjax.models import mmdit

    cfg = seedjax_config(s)
    model = mmdit.MMDiT(cfg, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    b, n, t, d = s["batch"], s["img_tokens"], s["txt_tokens"], cfg.text_dim
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, n, s["in_ch"])), jnp.float32)
    target = jnp.asarray(rng.normal(size=(b, n, s["in_ch"])), jnp.float32)
    txt = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    pooled = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
    tt = jnp.asarray(rng.uniform(size=(b,)), jnp.float32)
    gh, gw = grid_of(n)
    graphdef, state = nnx.split((model, opt))

    @jax.jit
    def step(state, x, target, txt, pooled, tt):
        model, opt = nnx.merge(graphdef, state)

        def loss_fn(m):
            return jnp.mean(jnp.square(m(x, tt, txt, pooled, grid_hw=(gh, gw)) - target))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), loss

    state, loss = step(state, x, target, txt, pooled, tt)
    loss.block_until_ready()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, loss = step(state, x, target, txt, pooled, tt)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    return times, mmdit.train_flops_per_example(cfg, n, t) * b


def time_torch(s: dict, steps: int) -> list[float]:
    import torch
    from diffusers import FluxTransformer2DModel

    from seedjax.interop.flux import diffusers_config

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**diffusers_config(seedjax_config(s))).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, n, t = s["batch"], s["img_tokens"], s["txt_tokens"]
    d = s["heads"] * s["head_dim"]
    x = torch.randn(b, n, s["in_ch"])
    target = torch.randn(b, n, s["in_ch"])
    txt = torch.randn(b, t, d)
    pooled = torch.randn(b, d)
    tt = torch.rand(b)
    gh, gw = grid_of(n)
    img_ids = torch.zeros(n, 3)
    img_ids[:, 1] = torch.arange(gh).repeat_interleave(gw).float()
    img_ids[:, 2] = torch.arange(gw).repeat(gh).float()
    txt_ids = torch.zeros(t, 3)
    txt_ids[:, 2] = gw + torch.arange(t).float()

    def one():
        opt.zero_grad(set_to_none=True)
        out = model(hidden_states=x, encoder_hidden_states=txt, pooled_projections=pooled, timestep=tt,
                    img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
        loss = torch.mean((out - target) ** 2)
        loss.backward()
        opt.step()

    one()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    return times


def matmul_peaks(n: int = 1024, repeats: int = 7) -> tuple[float, float]:
    """Float32 matmul TFLOP/s of JAX and of PyTorch on this machine (median)."""
    import torch

    from seedjax.train.perf import measure_matmul_tflops

    a = torch.ones(n, n)
    a @ a
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    return measure_matmul_tflops(n, repeats=repeats), 2 * n**3 / statistics.median(times) / 1e12


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="quickstart,large")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    import jax
    import torch

    jax_peak, torch_peak = matmul_peaks()
    machine = f"{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}"
    print(f"machine: {machine}")
    print(f"float32 matmul peak: jax {jax_peak:.3f} TFLOP/s, torch {torch_peak:.3f} TFLOP/s")
    rows = []
    header = "| size | batch x tokens | TFLOPs/step | seedjax s/step | torch s/step | seedjax MFU | torch MFU | throughput ratio (torch time / seedjax time) |"
    print(header)
    for name in args.sizes.split(","):
        s = SIZES[name]
        sj, flops = time_seedjax(s, args.steps)
        th = time_torch(s, args.steps)
        sj_med, th_med = statistics.median(sj), statistics.median(th)
        tflop = flops / 1e12
        row = (f"| {name} (hidden {s['heads'] * s['head_dim']}, {s['double']}+{s['single']} blocks) | "
               f"{s['batch']} x ({s['img_tokens']}+{s['txt_tokens']}) | {tflop:.4f} | {sj_med:.4f} | {th_med:.4f} | "
               f"{tflop / sj_med / jax_peak:.1%} | {tflop / th_med / torch_peak:.1%} | {th_med / sj_med:.2f}x |")
        print(row, flush=True)
        rows.append(row)
    if not args.no_append:
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md"), "a") as f:
            f.write(f"\n### Train step: seedjax vs diffusers Flux (PyTorch), {time.strftime('%Y-%m-%d')}\n\n")
            f.write(f"`python -m benchmarks.train_step --steps={args.steps}` on {machine}; "
                    f"float32 matmul peak jax {jax_peak:.3f} / torch {torch_peak:.3f} TFLOP/s; medians of "
                    f"{args.steps} steps after warm-up; MFU against each framework's own measured peak.\n\n")
            f.write(header + "\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
