"""Streaming (block-causal, KV cache, K steps a frame) against the video DiT's full-clip sampler.

    python -m benchmarks.stream --workdir=runs/t2v_q [--frames=8,32] [--steps=1,4] [--num=1] [--rounds=5] \\
        [--max_load=1.0] [--no-append]

One model, two ways to make the same clip, side by side in one process, interleaved:

- `full clip, N steps`: the run's own sampler (`seedjax.inference.load(RUN).generate_fn`: every
  frame at once, bidirectional attention, its steps and CFG); no frame exists before the end.
- `stream, K steps/frame`: the same parameters run block-causally (`model.causal=true`, every
  earlier frame kept; the benchmark writes that config beside a link to the run's checkpoints)
  through `seedjax.diffusion.autoregressive.Stream`: K Euler steps a latent frame with the KV
  cache, a latent run's VAE decoding each frame as it comes (`seedjax.tools.stream`'s loop).

Reported per arm and clip length: NFE per latent frame, the clip's wall time (median, min-max
over --rounds), the time until its first frame is available and the frames per second. A
bidirectional run streamed without AAPT's training makes poor frames: this measures the cost of
the mechanism, not the quality of a streaming model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import protocol


def causal_view(workdir: str, directory: str) -> str:
    """A workdir whose config runs `workdir`'s parameters block-causally (its checkpoints linked)."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    config["model"].update(causal=True, causal_window=0)
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    os.symlink(os.path.abspath(os.path.join(workdir, "checkpoints")), os.path.join(directory, "checkpoints"))
    return directory


def full_clip_arm(workdir: str, frames: int, num: int, prompt: str):
    from seedjax import inference

    bundle = inference.load(workdir).with_sampling(frames=frames)
    fn, params = bundle.generate_fn()
    jitted, batch = jax.jit(fn), bundle.prompts([prompt] * num)
    first = []

    def run():
        start = time.perf_counter()
        jax.block_until_ready(jitted(params, batch, jax.random.key(0)))
        first.append(time.perf_counter() - start)  # the first frame exists when the clip does

    return run, first, bundle.nfe


def stream_arm(workdir: str, frames: int, num: int, prompt: str, steps: int):
    from seedjax import inference
    from seedjax.diffusion.autoregressive import Stream

    bundle = inference.load(workdir).with_sampling(steps=steps)
    stream = Stream(bundle.model, bundle.geometry, bundle.sampler.sigmas)
    batch, first = bundle.prompts([prompt] * num), []

    def run():
        decode = bundle.codec.frame_decoder() if bundle.codec is not None else np.asarray
        start = time.perf_counter()
        state = stream.start(batch, max_frames=frames)
        for frame in range(frames):
            tokens, state = stream.next(state, jax.random.key(0))
            np.asarray(decode(stream.geometry.frames_of(tokens)))
            if frame == 0:
                first.append(time.perf_counter() - start)

    return run, first, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.stream", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a (bidirectional) video run")
    parser.add_argument("--frames", default="8,32", help="clip lengths in latent frames")
    parser.add_argument("--steps", default="1,4", help="sampler steps per streamed frame")
    parser.add_argument("--num", type=int, default=1, help="clips per call")
    parser.add_argument("--prompt", default="a red 3 moving left")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-append", dest="no_append", action="store_true")
    protocol.add_max_load(parser)
    args = parser.parse_args(argv)
    frames_list = [int(f) for f in args.frames.split(",")]
    steps_list = [int(k) for k in args.steps.split(",")]
    load_before = protocol.begin(args.max_load, args.no_append)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        causal = causal_view(args.workdir, os.path.join(tmp, "causal"))
        for frames in frames_list:
            arms = {}
            run, first, nfe = full_clip_arm(args.workdir, frames, args.num, args.prompt)
            arms[f"full clip, {nfe} NFE a frame"] = (run, first, nfe)
            for steps in steps_list:
                run, first, nfe = stream_arm(causal, frames, args.num, args.prompt, steps)
                arms[f"stream, {steps} step(s) a frame"] = (run, first, nfe)
            stats = protocol.interleave({name: arm[0] for name, arm in arms.items()}, rounds=args.rounds)
            for name, (_, first, nfe) in arms.items():
                clip = stats[name]
                first_ms = float(np.median(first[-args.rounds:])) * 1e3
                rows.append(f"| {frames} | {name} | {nfe} | {clip['median'] * 1e3:.1f} ({clip['min'] * 1e3:.1f}-"
                            f"{clip['max'] * 1e3:.1f}) | {first_ms:.1f} | {frames * args.num / clip['median']:.1f} |")
                print(rows[-1], flush=True)
    header = protocol.machine_header(load_before)
    table = "\n".join([
        f"\n### Streaming vs the full-clip sampler (benchmarks/stream.py), {header.split(',')[0]}\n",
        f"Machine: {header}.",
        f"Command: `python -m benchmarks.stream --workdir={args.workdir} --frames={args.frames} --steps={args.steps} "
        f"--num={args.num} --rounds={args.rounds}`\n",
        "| latent frames | arm | NFE a frame | ms per clip, median (min-max) | ms to the first frame | latent frames/s |",
        "|---|---|---|---|---|---|", *rows, ""])
    print(table)
    protocol.append(table, load_before, args.max_load, args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
