"""The train step's ops one at a time, JAX vs PyTorch, forward + backward, at the `large` size.

    python -m benchmarks.train_ops [--repeats=5] [--max_load=1.0] [--no-append]

A first look at where `benchmarks.train_step` loses, before a profile: attention (JAX's
`dot_product_attention`, and einsum softmax in two head layouts, against torch's
`scaled_dot_product_attention`), an MLP matmul ([B*L, 512] x [512, 2048] with tanh), and layer
norm with adaLN modulation. Medians of `--repeats` calls after a warm-up, in one process, the
two frameworks alternating call by call (`benchmarks.protocol.interleave`). A table is printed and appended to BENCHMARKS.md (benchmarks/protocol.py:
not when the machine was busy, or with --no-append): ratios on this machine, a lead, not a profile.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import protocol

B, L, H, D, W = 32, 288, 8, 64, 512  # the `large` preset of benchmarks/train_step.py: batch, tokens, heads


def blocking(fn, args):
    """A call of fn(*args) that returns once the result is computed (JAX dispatches asynchronously)."""
    return lambda: jax.block_until_ready(fn(*args))


def grads(loss, argnums):
    return jax.jit(jax.grad(loss, argnums))


def torch_grads(loss):
    def run(*xs):
        xs = [x.detach().requires_grad_() for x in xs]
        loss(*xs).backward()
    return run


def layer_norm_modulated(h, s):
    mean = h.mean(-1, keepdims=True)
    var = ((h - mean) ** 2).mean(-1, keepdims=True)
    return (h - mean) * jax.lax.rsqrt(var + 1e-6) * (1 + s) + s


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.train_ops", allow_abbrev=False)
    parser.add_argument("--repeats", type=int, default=5)
    protocol.add_max_load(parser)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    load_before = protocol.begin(args.max_load, args.no_append)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, L, H, D), np.float32)
    heads_first = np.ascontiguousarray(q.transpose(0, 2, 1, 3))
    x = rng.standard_normal((B * L, W), np.float32)
    w = rng.standard_normal((W, 4 * W), np.float32) * 0.02
    h = rng.standard_normal((B, L, W), np.float32)
    s = rng.standard_normal((B, 1, W), np.float32)
    scale = 1 / np.sqrt(D)
    cases = [
        ("attention, jax.nn.dot_product_attention [B,L,H,D]",
         grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v).sum(), (0, 1, 2)), (q, q, q),
         torch_grads(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum()),
         [torch.tensor(heads_first)] * 3),
        ("attention, einsum softmax [B,L,H,D]",
         grads(lambda q, k, v: jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(
             jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale, -1), v).sum(), (0, 1, 2)), (q, q, q), None, None),
        ("attention, einsum softmax [B,H,L,D]",
         grads(lambda q, k, v: jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(
             jnp.einsum("bhqd,bhkd->bhqk", q, k) * scale, -1), v).sum(), (0, 1, 2)), (heads_first,) * 3, None, None),
        ("MLP matmul + tanh [B*L, 512] x [512, 2048]", grads(lambda x, w: jnp.tanh(x @ w).sum(), (0, 1)), (x, w),
         torch_grads(lambda x, w: torch.tanh(x @ w).sum()), [torch.tensor(x), torch.tensor(w)]),
        ("layer norm + modulation [B, L, 512]", grads(lambda h, s: (layer_norm_modulated(h, s) ** 2).sum(), (0, 1)),
         (h, s), torch_grads(lambda h, s: (torch.nn.functional.layer_norm(h, (W,), eps=1e-6) * (1 + s) + s)
                              .pow(2).sum()), [torch.tensor(h), torch.tensor(s)]),
    ]
    rows = ["| op | jax s | torch s | torch time / jax time |", "|---|---|---|---|"]
    for name, jax_fn, jax_args, torch_fn, torch_args in cases:
        arms = {"jax": blocking(jax_fn, jax_args)}
        if torch_fn is not None:
            arms["torch"] = lambda fn=torch_fn, xs=torch_args: fn(*xs)  # eager: done on return
        times = protocol.interleave(arms, rounds=args.repeats)
        jax_s = times["jax"]["median"]
        if "torch" in times:
            torch_s = times["torch"]["median"]
            rows.append(f"| {name} | {jax_s:.4f} | {torch_s:.4f} | {torch_s / jax_s:.2f}x |")
        else:
            rows.append(f"| {name} | {jax_s:.4f} | - | - |")
        print(rows[-1], flush=True)
    table = "\n".join([f"\n### Train-step ops, forward + backward (benchmarks/train_ops.py)\n",
                       f"Machine: {protocol.machine_header(load_before)}; jax {jax.__version__}, torch "
                       f"{torch.__version__}; medians of {args.repeats} calls, seconds.\n", *rows, ""])
    print(table)
    protocol.append(table, load_before, args.max_load, args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
