"""Stream a video frame by frame from a block-causal video run (AAPT): every latent frame is
decoded and written as soon as it exists.

    python -m seedjax.tools.stream --workdir=runs/seedance/causal --prompt="a red 3 moving left" --frames=24 \\
        [--num=1] [--seed=0] [--out=stream] [--steps=K] [--commit=last|clean] [--script=prompts.txt] [--fps=8]

The run must be block-causal (`model.causal=true`): each latent frame is one call of the
jitted `seedjax.diffusion.autoregressive.Stream.next` (K sampler steps with the KV cache and
the previous frame recycled; compiled once, so --frames may exceed the training length), then
a latent run's causal video VAE decodes it alone (`LatentCodec.frame_decoder`: 1 pixel frame
for the first latent frame, `temporal_factor` for each later one) and the pixel frames go to
OUT/frame_00000.png, ... (a row of --num samples each) at once. At the end OUT/video.gif and
OUT/frames.npy ([num, F, H, W, C] floats in [-1, 1]) hold the whole clip.

--script: a text file of "FRAME: prompt" lines; from latent frame FRAME (>= 1) on, the stream
follows that prompt (AAPT's interactive control: the caption is swapped in the KV cache).
--steps overrides the run's sampler steps (K per frame); --commit: which keys/values a frame
leaves in the cache, its last step's ('last', AAPT's, no extra call) or those of one extra
call on the finished frame ('clean'). A guidance-embedded model streams at its embedded scale;
true classifier-free guidance would need a second cache and is not streamed (a run that
samples with CFG streams its conditional prediction; a note says so).

Prints each latent frame's model and decode latency as it comes, then the medians after the
first two frames (which include the compiles) and the pixel frames per second they give.
Exit codes: 0 written, 2 bad arguments or workdir (one line, nothing written).
"""

from __future__ import annotations

import os
import re
import sys
import time

import jax
import numpy as np
from PIL import Image

from seedjax import cli, inference
from seedjax.diffusion.autoregressive import COMMITS, Stream
from seedjax.inference.bundle import BundleError, split_shots
from seedjax.train.metrics import animated_gif, make_grid


def read_script(path: str, frames: int) -> dict[int, str]:
    """{latent frame: prompt} of a --script file ("FRAME: prompt" lines; blank lines and # comments skipped)."""
    if not os.path.isfile(path):
        raise ValueError(f"--script {path!r} is not a file")
    script = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            match = re.fullmatch(r"\s*(\d+)\s*:\s*(\S.*?)\s*", line)
            if not match or not 1 <= int(match[1]) < frames:
                raise ValueError(f"--script {path}:{number}: expected 'FRAME: prompt' with 1 <= FRAME < --frames "
                                 f"({frames}), got {line.strip()!r}")
            script[int(match[1])] = match[2]
    return script


def open_stream(args) -> tuple[Stream, object, dict[int, str]]:
    """(the Stream, the bundle, the script) for the flags; ValueError / BundleError on bad input."""
    if args.frames < 1 or args.num < 1:
        raise ValueError(f"--frames and --num must be >= 1, got {args.frames} and {args.num}")
    if args.commit not in COMMITS:
        raise ValueError(f"--commit must be one of {', '.join(COMMITS)}, got {args.commit!r}")
    script = read_script(args.script, args.frames) if args.script else {}
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise ValueError(f"--out {args.out}: exists and is not an empty directory")
    bundle = inference.load(args.workdir).with_sampling(steps=args.steps)
    if not bundle.model.is_video:
        raise BundleError("this run generates images; streaming needs a block-causal video DiT")
    if bundle.codec is not None and not bundle.codec.is_video:
        raise BundleError("a latent run of an image VAE decodes frames independently; stream a video VAE's run")
    for prompt in (args.prompt, *script.values()):
        if len(split_shots(prompt)) > 1:
            raise ValueError(f"prompt {prompt!r}: a stream follows one caption at a time (use --script to change it)")
    sampler = bundle.sampler
    guidance = sampler.guidance if bundle.model.guidance_embedded else None
    # Stream refuses a bidirectional run with one line (it needs model.causal for its KV cache).
    stream = Stream(bundle.model, bundle.geometry, sampler.sigmas, commit=args.commit, guidance=guidance)
    if sampler.guided:
        print(f"stream: note: the run samples with CFG {sampler.cfg_scale:g}; the stream runs the conditional "
              f"prediction alone (one cache)", file=sys.stderr)
    return stream, bundle, script


def write_frames(out: str, first_index: int, pixels: np.ndarray) -> None:
    """pixels [num, F, H, W, C] -> OUT/frame_{index}.png, one row of num samples per frame."""
    for offset in range(pixels.shape[1]):
        grid = make_grid(pixels[:, offset], cols=pixels.shape[0])
        Image.fromarray(grid).save(os.path.join(out, f"frame_{first_index + offset:05d}.png"))


@cli.entry("seedjax.tools.stream")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.tools.stream", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--frames", type=int, default=16, help="latent frames to generate")
    parser.add_argument("--num", type=int, default=1, help="videos streamed side by side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="stream")
    parser.add_argument("--steps", type=int, default=0, help="sampler steps per frame (default: the run's)")
    parser.add_argument("--commit", default="last")
    parser.add_argument("--script", default="", help="'FRAME: prompt' lines: prompt changes while streaming")
    parser.add_argument("--fps", type=float, default=8.0, help="of video.gif")
    args = parser.parse(argv)
    try:
        stream, bundle, script = open_stream(args)
        state = stream.start(bundle.prompts([args.prompt] * args.num), max_frames=args.frames)
    except (BundleError, ValueError) as e:
        print(f"stream: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    decode = bundle.codec.frame_decoder() if bundle.codec is not None else (lambda latent: latent)
    rng, clip, model_ms, decode_ms = jax.random.key(args.seed), [], [], []
    for frame in range(args.frames):
        if frame in script:
            state = stream.prompt(state, bundle.prompts([script[frame]] * args.num))
            print(f"stream: frame {frame}: prompt {script[frame]!r}", flush=True)
        t0 = time.perf_counter()
        tokens, state = stream.next(state, rng)
        latent = jax.block_until_ready(stream.geometry.frames_of(tokens))
        t1 = time.perf_counter()
        pixels = np.clip(np.asarray(decode(latent), np.float32), -1.0, 1.0)
        t2 = time.perf_counter()
        write_frames(args.out, sum(p.shape[1] for p in clip), pixels)
        clip.append(pixels)
        model_ms.append((t1 - t0) * 1e3)
        decode_ms.append((t2 - t1) * 1e3)
        print(f"stream: frame {frame}: {model_ms[-1]:.1f} ms model + {decode_ms[-1]:.1f} ms decode -> "
              f"{pixels.shape[1]} pixel frame(s)", flush=True)
    video = np.concatenate(clip, axis=1)
    np.save(os.path.join(args.out, "frames.npy"), video)
    with open(os.path.join(args.out, "video.gif"), "wb") as f:
        f.write(animated_gif([make_grid(video[:, i], cols=args.num) for i in range(video.shape[1])], args.fps))
    steady = slice(2, None) if args.frames > 2 else slice(None)
    per_frame = float(np.median(np.add(model_ms, decode_ms)[steady]))
    pixel_frames = video.shape[1] - 1 if args.frames > 1 else 1  # the first latent frame makes one
    rate = pixel_frames / max(args.frames - 1, 1) / (per_frame / 1e3)
    print(f"stream: {bundle.config.stage} at {len(stream.sigmas) - 1} step(s) a frame: {args.frames} latent -> "
          f"{video.shape[1]} pixel frames; median {np.median(model_ms[steady]):.1f} ms model + "
          f"{np.median(decode_ms[steady]):.1f} ms decode per latent frame after the first two, {rate:.1f} pixel "
          f"frames/s; wrote {args.out}/frame_*.png, video.gif, frames.npy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
