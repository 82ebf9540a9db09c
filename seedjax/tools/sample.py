"""Sample from any stage's trained generator at its NFE: images, or videos from a video model.

    python -m seedjax.tools.sample --workdir=runs/qs/dmdo --prompt="a handwritten 7" --prompt="the number 3" \
        [--num=8] [--seed=0] [--out=samples.png] [--steps=N] [--guidance=G] [--step=CHECKPOINT_STEP]
    python -m seedjax.tools.sample --workdir=runs/seedance/i2v --prompt="a red 3 moving left" \
        [--frames=8] [--first_frame=img.png] [--out=video.gif | video.mp4]

Rows of the PNG grid are prompts, columns are seeds. A video model writes an animated grid
(`.gif`, or `.mp4` through PyAV) and a filmstrip PNG beside it; `--frames` sets the clip length,
`--first_frame` an image the video starts from (image-to-video; resized to the run's size), and
"shot 1: ...; shot 2: ..." prompts are multi-shot. `--steps` / `--guidance` override the
run's sampling settings (`config.sampling.num_steps`, and the CFG scale for a teacher or the
embedded scale for a distilled student). Only the generator's parameters are read
(`seedjax.inference.load`). Prints the NFE (a true-CFG step counts twice) and the wall time
per image. Exit codes: 0 written, 2 bad arguments or workdir.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from PIL import Image

from seedjax import cli, inference
from seedjax.inference.bundle import BundleError
from seedjax.train.metrics import animated_gif, make_grid


@cli.entry("seedjax.tools.sample")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.tools.sample", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    parser.add_argument("--num", type=int, default=8, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--step", type=int, default=-1, help="checkpoint step (default: the latest)")
    parser.add_argument("--frames", type=int, default=0, help="video models: frames per clip (default: the run's)")
    parser.add_argument("--first_frame", default="", help="video models: an image the clips start from (I2V)")
    args = parser.parse(argv)
    if args.num < 1:
        print(f"sample: --num must be >= 1, got {args.num}", file=sys.stderr)
        return 2
    if args.first_frame and not os.path.isfile(args.first_frame):
        print(f"sample: --first_frame {args.first_frame!r} is not a file", file=sys.stderr)
        return 2
    path = args.workdir if args.step < 0 else os.path.join(args.workdir, "checkpoints", str(args.step))
    try:
        bundle = inference.load(path).with_sampling(args.steps, args.guidance, args.frames)
        if (args.frames or args.first_frame) and not bundle.model.is_video:
            raise BundleError("--frames and --first_frame need a video model; this run generates images")
        captions = [p for p in args.prompt for _ in range(args.num)]
        batch = bundle.prompts(captions)
        if args.first_frame:
            batch["first_frame"] = np.repeat(_load_image(args.first_frame, bundle.pixel_shape)[None], len(captions), 0)
    except (BundleError, ValueError) as e:
        print(f"sample: {e}", file=sys.stderr)
        return 2
    generate, params = bundle.generate_fn()
    jitted = jax.jit(generate)
    rng = jax.random.key(args.seed)
    jax.block_until_ready(jitted(params, batch, rng))  # compile
    t0 = time.perf_counter()
    images = np.asarray(jax.device_get(jitted(params, batch, rng)))
    seconds = (time.perf_counter() - t0) / len(captions)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if images.shape[1] == 1:
        Image.fromarray(make_grid(images[:, 0], cols=args.num)).save(args.out)
    else:
        frames = [make_grid(images[:, f], cols=args.num) for f in range(images.shape[1])]
        write_video(args.out, frames)
        Image.fromarray(make_grid(images)).save(os.path.splitext(args.out)[0] + "_frames.png")
    what = "image" if images.shape[1] == 1 else f"{images.shape[1]}-frame clip"
    print(f"sample: {bundle.config.stage} at {bundle.nfe} NFE, {seconds * 1e3:.1f} ms/{what}; wrote {args.out}")
    return 0


def _load_image(path: str, pixel_shape) -> np.ndarray:
    """An image file as [H, W, C] in [-1, 1] at the run's frame size and channels (in pixels,
    also for a latent run, whose VAE encodes it)."""
    _, height, width, channels = pixel_shape
    try:
        image = Image.open(path).convert("L" if channels == 1 else "RGB")
    except OSError as e:
        raise ValueError(f"--first_frame {path!r}: not a readable image ({e})") from None
    image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.float32).reshape(height, width, -1)
    return pixels / 127.5 - 1.0


def write_video(path: str, frames: list[np.ndarray], fps: float = 8.0) -> None:
    """uint8 RGB frames -> an animated GIF, or an .mp4 through PyAV."""
    if not path.endswith(".mp4"):
        with open(path, "wb") as f:
            f.write(animated_gif(frames, fps))
        return
    import av  # optional heavy dependency: only .mp4 output needs it

    even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]  # yuv420p needs even sizes
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=int(fps))
        stream.height, stream.width = even[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in even:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


if __name__ == "__main__":
    sys.exit(main())
