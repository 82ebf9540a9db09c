"""MMDiT `model.scan_layers`: compile time and step time, scanned vs unrolled, by depth.

    python -m benchmarks.scan_layers [--depths=2,8,24] [--repeats=3] [--steps=5] [--remat] [--max_load=1.0]
        [--no-append]

Depth d = d/2 double-stream + d/2 single-stream blocks. The step is one jitted train-like
update: forward + backward of the MMDiT (velocity MSE against a random target) and an SGD
update of every parameter, on a small batch of a narrow model (compile time grows with the
number of ops, not the width, so a narrow model shows the compile-time effect cheaply).
Compile time = trace + lower + XLA compile of a fresh jit (no compilation cache); step time =
median of `--steps` runs of the compiled step. Every (depth, layout) is measured once per
round, rounds interleaved, medians over `--repeats` rounds; the 1-minute load average is read
before each measurement and its range reported. A table is printed and appended to
BENCHMARKS.md (unless --no-append, or unless the 1-minute load average at the start was above
--max_load).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import jax

jax.config.update("jax_enable_compilation_cache", False)  # every compile is a real one

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import protocol  # noqa: E402
from seedjax.models import mmdit  # noqa: E402
from seedjax.schema.models import mmdit_preset  # noqa: E402

GRID, TEXT, BATCH = (4, 4), 8, 4


def config(depth: int, scanned: bool, remat: bool):
    cfg = mmdit_preset("tiny")
    cfg.update(num_heads=2, head_dim=32, axes_dims_rope=(8, 12, 12), depth_double=depth // 2,
               depth_single=depth - depth // 2, text_dim=64, pooled_dim=64, in_channels=16,
               scan_layers=scanned, remat=remat)
    return cfg


def inputs(cfg):
    rng = np.random.default_rng(0)
    n = GRID[0] * GRID[1]
    f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return dict(x=f(BATCH, n, cfg.in_channels), target=f(BATCH, n, cfg.in_channels),
                text=f(BATCH, TEXT, cfg.text_dim), pooled=f(BATCH, cfg.pooled_dim),
                t=jnp.asarray(rng.uniform(size=(BATCH,)), jnp.float32))


def make_step(graphdef):
    def step(params, batch):
        def loss_fn(p):
            out = nnx.merge(graphdef, p)(batch["x"], batch["t"], batch["text"], batch["pooled"], grid_hw=GRID)
            return jnp.mean(jnp.square(out - batch["target"]))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), loss

    return step


def measure(depth: int, scanned: bool, remat: bool, steps: int) -> dict:
    cfg = config(depth, scanned, remat)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: mmdit.MMDiT(cfg, nnx.Rngs(0))))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype), params)
    batch = inputs(cfg)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    lowered = jax.jit(make_step(graphdef), donate_argnums=0).lower(params, batch)  # a fresh jit: a real trace
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    params, loss = compiled(params, batch)  # warm-up
    loss.block_until_ready()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        params, loss = compiled(params, batch)
        loss.block_until_ready()
        times.append(time.perf_counter() - t)
    return dict(trace=t1 - t0, compile=t2 - t1, total=t2 - t0, step=statistics.median(times), load=load)


def machine() -> str:
    dev = jax.devices()[0]
    return f"{dev.platform} ({dev.device_kind}), jax {jax.__version__}"


HEADER = ("| depth (double+single) | layout | trace+lower (s) | XLA compile (s) | compile total (s) | "
          "compile ratio (unrolled / scanned) | step (ms) | step ratio (scanned / unrolled) | load avg (1 min) |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", default="2,8,24")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    p.add_argument("--remat", action="store_true", help="model.remat=true (policy nothing_saveable)")
    p.add_argument("--no-append", dest="append", action="store_false")
    protocol.add_max_load(p)
    args = p.parse_args(argv)
    load_before = protocol.begin(args.max_load, not args.append)
    depths = [int(d) for d in args.depths.split(",") if d]
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {machine()}, {protocol.cpu_model()}, {os.cpu_count()} cores\nuptime: {uptime_before}", flush=True)
    results = {(d, s): [] for d in depths for s in (False, True)}
    for r in range(args.repeats):
        for d in depths:
            for scanned in (False, True):
                m = measure(d, scanned, args.remat, args.steps)
                results[(d, scanned)].append(m)
                print(f"round {r}: depth {d} {'scanned' if scanned else 'unrolled'}: compile {m['total']:.2f} s "
                      f"(trace {m['trace']:.2f}), step {1e3 * m['step']:.2f} ms, load {m['load']:.1f}", flush=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    med = lambda d, s, k: statistics.median(m[k] for m in results[(d, s)])
    rows = []
    for d in depths:
        for scanned in (False, True):
            loads = [m["load"] for m in results[(d, scanned)]]
            ratio_c = med(d, False, "total") / med(d, True, "total")
            ratio_s = med(d, True, "step") / med(d, False, "step")
            rows.append(f"| {d} ({d // 2}+{d - d // 2}) | {'scanned' if scanned else 'unrolled'} | "
                        f"{med(d, scanned, 'trace'):.2f} | {med(d, scanned, 'compile'):.2f} | "
                        f"{med(d, scanned, 'total'):.2f} | {ratio_c:.2f}x | {1e3 * med(d, scanned, 'step'):.2f} | "
                        f"{ratio_s:.2f}x | {min(loads):.1f}-{max(loads):.1f} |")
    table = [HEADER, "|" + "---|" * 9] + rows
    print("\n".join(table))
    print(f"uptime after: {uptime_after}")
    if args.append:
        command = (f"python -m benchmarks.scan_layers --depths={args.depths} --repeats={args.repeats} "
                   f"--steps={args.steps}{' --remat' if args.remat else ''}")
        lines = [
            "", f"## MMDiT scan over layers (benchmarks/scan_layers.py), {time.strftime('%Y-%m-%d')}", "",
            f"Command: `{command}`", "",
            f"Machine: {machine()}; {protocol.machine_header(load_before)}. `uptime` before: `{uptime_before}`; "
            f"after: `{uptime_after}`.", "",
            f"Model: hidden 64 (2 heads x 32), MLP ratio 4, depth d = d/2 double + d/2 single blocks, "
            f"{'remat on' if args.remat else 'no remat'}, float32; step = forward + backward + SGD update on a batch "
            f"of {BATCH} x ({GRID[0] * GRID[1]} image + {TEXT} text tokens). Compile = trace + lower + XLA compile "
            f"of a fresh jit, compilation cache off; step = median of {args.steps} runs. Medians of {args.repeats} "
            f"interleaved rounds (every depth and layout once per round); the load column is the 1-minute load "
            f"average read before each measurement (min-max over rounds).", "",
        ] + table
        protocol.append("\n".join(lines) + "\n", load_before, args.max_load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
