"""Video DiT attention modes side by side: decoupled (Seedance) vs full_3d, FLOPs and train-step time.

    python -m benchmarks.video_attention [--frames=8,16,32] [--sizes=16] [--batch=2] [--steps=3]
        [--rounds=3] [--max_load=1.0] [--no-append]

The model is the video quickstart's (`experiments/seedance/t2v.py`: hidden 96 = 3 heads x 32,
depth 3, 48 text tokens, 4x4 patches) in both attention modes, which share their weights; clips of
`--frames` frames at `--sizes` pixels square (16: 16 tokens a frame, 32: 64).

- FLOPs per example of the DiT: the model's analytic count (`video_dit.train_flops_per_example`,
  training = 3 x forward), XLA's count of the lowered forward (x 3, the same convention: an
  independent check), and the attention products counted here call by call (scores and values: 2
  matmuls of 2 * Lq * Lk * hidden FLOPs each) with their share of the XLA count; the benchmark
  checks that the model's count differs between the modes by exactly the attention difference.
- Time: the pretraining stage's compiled train step (`seedjax.train.flow_matching.flow_matching_step`:
  text encoder + DiT forward and backward, AdamW, EMA) on a random batch of `--batch` clips, state
  donated as in the training loop. Every (frames, mode) is compiled once (compile time reported,
  one measurement); then `--rounds` rounds, each running every frame count in both modes (the order
  of the two modes alternates between rounds), each entry `--steps` timed steps. Reported: the
  median over rounds of the per-round median step, wall and process CPU time (all threads), and the
  full_3d / decoupled ratio of the medians with the range of the per-round ratios.
The 1-minute load average is read before each measurement; `uptime` before and after. A table is
printed and appended to BENCHMARKS.md (unless --no-append, or unless the 1-minute load average at
the start was above --max_load).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import protocol
from seedjax.config import load_config
from seedjax.models import video_dit
from seedjax.train.flow_matching import flow_matching_step, init

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/seedance/t2v.py"
MODES = ("decoupled", "full_3d")


def config_for(mode: str, frames: int, size: int, batch: int):
    return load_config(f"{os.path.join(ROOT, CONFIG)}:attention={mode}",
                       {"data.video.num_frames": str(frames), "data.image_size": str(size),
                        "batch_size": str(batch)})


def grid_of(config, frames: int, size: int) -> tuple[int, int, int]:
    patch = config.input.patch_size
    return frames, size // patch, size // patch


def attention_flops(model_cfg, grid: tuple[int, int, int], num_text: int) -> float:
    """Training FLOPs of one example's attention products (QK^T and PV), counted call by call:
    what the mode's layers attend over, independent of the model's own formula."""
    frames, h, w = grid
    per_frame, visual = h * w, frames * h * w
    hidden = model_cfg.num_heads * model_cfg.head_dim
    pair = lambda lq, lk: 2 * (2 * lq * lk * hidden)  # scores + values, 2 FLOPs a multiply-add
    if model_cfg.attention == "decoupled":
        window = min(model_cfg.temporal_window or frames, frames)
        windows = [min(window, frames - start) for start in range(0, frames, window)]
        spatial = frames * pair(num_text + per_frame, num_text + per_frame)  # every frame with all text
        temporal = per_frame * sum(pair(n, n) for n in windows)  # every position, across its window
    else:
        spatial = pair(num_text + visual, num_text + visual)
        temporal = pair(visual, visual)
    return 3.0 * model_cfg.depth * (spatial + temporal)


def xla_train_flops(model_cfg, grid: tuple[int, int, int], num_text: int) -> float:
    """3 x the FLOPs XLA counts in one example's DiT forward (`Lowered.cost_analysis`, no compile):
    an independent check of the model's analytic count, on the same 3 x forward convention."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: video_dit.VideoDiT(model_cfg, nnx.Rngs(0))))
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    forward = lambda state, x, text, pooled: nnx.merge(graphdef, state)(x, jnp.ones((1,)), text, pooled, grid=grid)
    lowered = jax.jit(forward).lower(state, spec(1, math.prod(grid), model_cfg.in_channels),
                                     spec(1, num_text, model_cfg.text_dim), spec(1, model_cfg.pooled_dim))
    return 3.0 * float(lowered.cost_analysis()["flops"])


def random_batch(config, frames: int, size: int, batch: int, seed: int = 0) -> dict:
    """A clip batch of the data contract (single shot): the step's cost does not depend on content."""
    rng = np.random.default_rng(seed)
    length = config.data.max_text_len
    tokens = rng.integers(3, 259, (batch, length)).astype(np.int32)
    mask = np.arange(length)[None] < rng.integers(8, length, (batch, 1))
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    return {k: jnp.asarray(v) for k, v in dict(
        video=rng.uniform(-1, 1, (batch, frames, size, size, 3)).astype(np.float32), tokens=tokens,
        text_mask=mask, shot_tokens=tokens[:, None], shot_mask=mask[:, None],
        frame_shot=np.zeros((batch, frames), np.int32)).items()}


class Variant:
    """One (frames, size, mode): its compiled step, live state and batch."""

    def __init__(self, mode: str, frames: int, size: int, batch: int):
        self.mode, self.frames, self.size = mode, frames, size
        self.config = config = config_for(mode, frames, size, batch)
        self.grid = grid_of(config, frames, size)
        self.num_text = config.data.max_text_len * int(config.data.video.max_shots)
        self.flops = video_dit.train_flops_per_example(config.model, self.grid, self.num_text)
        self.attention = attention_flops(config.model, self.grid, self.num_text)
        self.xla_flops = xla_train_flops(config.model, self.grid, self.num_text)
        make = lambda: init(config, nnx.Rngs(config.seed))
        graphdef, _ = nnx.split(nnx.eval_shape(make))
        self.state = jax.jit(lambda: nnx.split(make())[1])()  # distinct buffers (EMA starts as a copy), as the loop
        self.batch = random_batch(config, frames, size, batch)

        def step(state, batch, index):
            module = nnx.merge(graphdef, state)
            metrics = flow_matching_step(module, batch, jax.random.fold_in(jax.random.key(0), index), config)
            return nnx.state(module), metrics["loss"]

        t0 = time.perf_counter()
        self.step = jax.jit(step, donate_argnums=0).lower(self.state, self.batch, 0).compile()
        self.compile_s = time.perf_counter() - t0
        self.index = 0
        self.run(1)  # warm-up
        self.wall, self.cpu, self.loads = [], [], []

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        walls, cpus = [], []
        for _ in range(steps):
            w0, c0 = time.perf_counter(), time.process_time()
            self.state, loss = self.step(self.state, self.batch, self.index)
            loss.block_until_ready()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            self.index += 1
        if not math.isfinite(float(loss)):
            raise RuntimeError(f"{self.mode} at {self.frames} frames: non-finite loss")
        return walls, cpus

    def measure(self, steps: int) -> None:
        self.loads.append(os.getloadavg()[0])
        walls, cpus = self.run(steps)
        self.wall.append(statistics.median(walls))
        self.cpu.append(statistics.median(cpus))


def machine() -> str:
    dev = jax.devices()[0]
    return f"{dev.platform} ({dev.device_kind}), jax {jax.__version__}"


HEADER = ("| frames x px | tokens (text + visual) | mode | DiT GFLOPs / example: model | XLA | attention "
          "| attention share (of XLA) | FLOPs full / dec: model, XLA | compile (s) | step wall (ms) | step CPU (ms) "
          "| wall full / dec (rounds) | CPU full / dec | load avg |")


def table(pairs: list[tuple[Variant, Variant]]) -> list[str]:
    rows = [HEADER, "|" + "---|" * 14]
    med = statistics.median
    for dec, full in pairs:
        flop_ratio = f"{full.flops / dec.flops:.2f}x, {full.xla_flops / dec.xla_flops:.2f}x"
        per_round = [f / d for f, d in zip(full.wall, dec.wall)]
        wall_ratio = f"{med(full.wall) / med(dec.wall):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"
        cpu_ratio = f"{med(full.cpu) / med(dec.cpu):.2f}x"
        for v in (dec, full):
            visual = math.prod(v.grid)
            rows.append(
                f"| {v.frames} x {v.size}x{v.size} | {v.num_text} + {visual} | {v.mode} | {v.flops / 1e9:.3f} | "
                f"{v.xla_flops / 1e9:.3f} | {v.attention / 1e9:.3f} | {v.attention / v.xla_flops:.1%} | {flop_ratio} | "
                f"{v.compile_s:.1f} | "
                f"{1e3 * med(v.wall):.1f} | {1e3 * med(v.cpu):.1f} | {wall_ratio} | {cpu_ratio} | "
                f"{min(v.loads):.1f}-{max(v.loads):.1f} |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", default="8,16,32")
    p.add_argument("--sizes", default="16", help="frame sizes in pixels (16: 16 tokens a frame, 32: 64)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (median)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--no-append", dest="append", action="store_false")
    protocol.add_max_load(p)
    args = p.parse_args(argv)
    frames = [int(f) for f in args.frames.split(",") if f]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if min(frames + sizes + [args.batch, args.steps, args.rounds]) < 1 or any(s % 4 for s in sizes):
        p.error("frames, batch, steps, rounds must be positive; sizes multiples of the patch size 4")
    load_before = protocol.begin(args.max_load, not args.append)
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {machine()}, {protocol.cpu_model()}, {os.cpu_count()} cores\nuptime: {uptime_before}", flush=True)

    pairs = []
    for size in sizes:
        for f in frames:
            pair = tuple(Variant(mode, f, size, args.batch) for mode in MODES)
            dec, full = pair
            # The model's count and the call-by-call count agree on what the modes change.
            if not math.isclose(full.flops - dec.flops, full.attention - dec.attention, rel_tol=1e-9):
                raise RuntimeError(f"FLOP counts disagree at {f} frames: model {full.flops - dec.flops:.4g}, "
                                   f"attention calls {full.attention - dec.attention:.4g}")
            print(f"compiled {f} x {size}px: " + ", ".join(f"{v.mode} {v.compile_s:.1f} s" for v in pair), flush=True)
            pairs.append(pair)
    for r in range(args.rounds):
        for pair in pairs:
            for v in (pair if r % 2 == 0 else pair[::-1]):
                v.measure(args.steps)
            print(f"round {r}: {pair[0].frames} x {pair[0].size}px: "
                  + ", ".join(f"{v.mode} {1e3 * v.wall[-1]:.1f} ms" for v in pair), flush=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = table(pairs)
    print("\n".join(rows) + f"\nuptime after: {uptime_after}")
    if args.append:
        cfg = pairs[0][0].config
        command = (f"python -m benchmarks.video_attention --frames={args.frames} --sizes={args.sizes} "
                   f"--batch={args.batch} --steps={args.steps} --rounds={args.rounds}")
        lines = [
            "", f"## Video DiT: decoupled vs full_3d attention (benchmarks/video_attention.py), "
                f"{time.strftime('%Y-%m-%d')}", "",
            f"Command: `{command}`", "",
            f"Machine: {machine()}; {protocol.machine_header(load_before)}. `uptime` before: `{uptime_before}`; "
            f"after: `{uptime_after}`.", "",
            f"Model: the video quickstart's (`{CONFIG}`): hidden {cfg.model.num_heads * cfg.model.head_dim} "
            f"({cfg.model.num_heads} heads x {cfg.model.head_dim}), depth {cfg.model.depth}, "
            f"{cfg.data.max_text_len} text tokens, {cfg.input.patch_size}x{cfg.input.patch_size} patches, temporal "
            f"window {cfg.model.temporal_window or 'all frames'}, float32; both modes share the weights. GFLOPs: "
            f"the model's analytic training count of the DiT per example (`video_dit.train_flops_per_example`; text "
            f"encoder excluded); XLA: 3 x the FLOPs XLA counts in the DiT's forward on one example (the same "
            f"convention, an independent check of the model's count); attention: the QK^T and PV products counted "
            f"call by call (checked against the difference of the model's counts), and their share of the XLA count. "
            f"Step: the pretraining stage's compiled `flow_matching_step` "
            f"(text encoder + DiT forward and backward, AdamW, EMA) on {args.batch} random clips, state donated; "
            f"compile: one measurement; step times: median over {args.rounds} interleaved rounds (both modes of every "
            f"frame count per round, their order alternating) of the median of {args.steps} steps; ratios: of those "
            f"medians, per-round range in brackets; CPU: process time, all threads; load: 1-minute load average "
            f"before each measurement (min-max).", "",
        ] + rows + [
            "", "The quality of both modes at equal training steps is not part of this benchmark: it comes from "
                "training the video quickstart twice (`experiments/seedance/t2v.py` and `t2v.py:attention=full_3d`, "
                "same steps) and is reported with the video quickstart's results in this file.",
        ]
        protocol.append("\n".join(lines) + "\n", load_before, args.max_load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
