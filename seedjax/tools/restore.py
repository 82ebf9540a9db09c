"""Restore images and videos of any size with a restoration run (SeedVR / SeedVR2).

    python -m seedjax.tools.restore --workdir=runs/seedvr/restore_adversarial --input=my_videos/ --out=restored/ \\
        [--steps=K] [--seed=0] [--window_rule=adaptive|fixed|grow] [--tile=PIXELS] [--overlap=8] \\
        [--chunk_frames=N] [--prompt=TEXT]

--workdir: a restoration run (`config.diffusion.restore`; its latest checkpoint) or one of its
checkpoints (workdir/checkpoints/N). --input: an image (.png .jpg .jpeg .bmp .webp, read with
PIL; EXIF orientation applied, alpha dropped, grayscale made RGB), a video (.mp4 .webm .mov .avi
.mkv .gif: every frame of its first video stream, decoded with PyAV) or a folder of them (not
entered recursively; other entries and hidden files are skipped, and counted).

Every file is restored at its own size by `seedjax.inference.restoration.Restorer`: --steps
(default: the run's sampler), --window_rule (default: the run's), --tile / --overlap (spatial
tiles blended over the overlap; 0 = the whole frame at once), --chunk_frames (default: the
training clips' length) and --prompt (default: the empty caption) are its settings. A video is
read, restored and written one chunk of frames at a time, so files of any length fit in memory.
A file's chunk c is `Restorer(...)(frames, key)` with key = jax.random.key(--seed) for the first
chunk and fold_in(key(--seed), c) after it: an image is exactly `restorer(image, key(seed))`.

Outputs in --out under the input's name: an image as STEM.png, a video as STEM.mp4, GIFs included
(H.264 through PyAV: libx264, yuv420p, crf 12, the source's average frame rate and rotation tag,
no audio; an odd width or height is padded by one edge pixel, as yuv420p needs even sizes).
OUT/summary.json holds the settings and, per file, its input size, frames, output size, seconds
and the NFE. Prints a line per file (name, size, frames, seconds) and a last line with the totals.

Exit codes: 0 written; 2 bad arguments, input or workdir (one line on stderr, nothing written:
missing flags, a missing input, a folder with no image or video, two inputs with one output name,
a file that does not open (an image's header, a video's first frame), a run that is not a
restoration run, a bad --window_rule or other setting, an --out that is or lies under a file, an
--out where an output would overwrite its input).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from fractions import Fraction
from typing import Iterator

import jax
import numpy as np
from PIL import Image, ImageOps

from seedjax import cli, inference
from seedjax.inference.bundle import BundleError
from seedjax.inference.restoration import Restorer
from seedjax.models import adaptive_windows
from seedjax.serving.png import to_uint8

IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEOS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
CRF = "12"  # x264's quality scale (0 lossless, 23 its default): near-transparent, so the restoration is what one sees


@dataclasses.dataclass(frozen=True)
class Job:
    source: str  # the input file
    target: str  # its output in --out
    video: bool


def kind(name: str) -> str:
    """'image', 'video' or '' (not supported) by the file name's extension."""
    ext = os.path.splitext(name)[1].lower()
    return "image" if ext in IMAGES else "video" if ext in VIDEOS else ""


def list_inputs(path: str) -> tuple[list[str], int]:
    """(the image and video files `path` names, how many other entries of a folder are skipped)."""
    if os.path.isfile(path):
        if not kind(path):
            raise ValueError(f"--input {path}: not an image ({' '.join(IMAGES)}) or a video ({' '.join(VIDEOS)})")
        return [path], 0
    if not os.path.isdir(path):
        raise ValueError(f"--input {path}: no such file or folder")
    names = sorted(os.listdir(path))
    # Hidden files (macOS' ._x.png, editors' swap files) are not the user's pictures, whatever their extension.
    files = [os.path.join(path, n) for n in names
             if kind(n) and not n.startswith(".") and os.path.isfile(os.path.join(path, n))]
    if not files:
        raise ValueError(f"--input {path}: no image ({' '.join(IMAGES)}) or video ({' '.join(VIDEOS)}) in this folder "
                         f"(sub-folders are not entered)")
    return files, len(names) - len(files)


def plan(files: list[str], out: str) -> list[Job]:
    """One job per file; ValueError when two files would be written to one name or onto an input."""
    jobs, taken = [], {}
    for source in files:
        video = kind(source) == "video"
        name = os.path.splitext(os.path.basename(source))[0] + (".mp4" if video else ".png")
        if name in taken:
            raise ValueError(f"{taken[name]} and {source} would both be written to {os.path.join(out, name)}; "
                             f"rename one")
        taken[name] = source
        target = os.path.join(out, name)
        if os.path.exists(target) and os.path.samefile(target, source):
            raise ValueError(f"--out {out}: {name} would overwrite its input; choose another --out")
        jobs.append(Job(source, target, video))
    return jobs


def check_readable(job: Job) -> None:
    """Open an image's header, decode a video's first frame: an unreadable file is a one-line exit 2
    before anything is written, not a traceback half-way through a folder."""
    if not job.video:
        try:
            with Image.open(job.source):
                return
        except OSError as e:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"{job.source}: not a readable image ({e})") from None
    try:
        import av  # optional heavy dependency: only videos need it
    except ImportError:
        raise ValueError(f"{job.source}: videos need PyAV (pip install av)") from None
    if "libx264" not in av.codecs_available:
        raise ValueError("this PyAV has no libx264 encoder, which restored videos are written with")
    try:
        with av.open(job.source) as container:
            if not container.streams.video:
                raise ValueError(f"{job.source}: no video stream")
            first = next(container.decode(container.streams.video[0]), None)
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"{job.source}: not a readable video ({e})") from None
    if first is None:
        raise ValueError(f"{job.source}: no frame of its video stream could be decoded")


def check_flags(args) -> None:
    """The flags' own errors (ValueError), before the run is loaded: quick, and nothing is written."""
    if args.window_rule and args.window_rule not in adaptive_windows.RULES:
        raise ValueError(f"--window_rule must be one of {', '.join(adaptive_windows.RULES)}, got {args.window_rule!r}")
    for flag in ("steps", "tile", "overlap", "chunk_frames"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    existing = os.path.abspath(args.out)
    while not os.path.exists(existing):  # the folder itself, or the nearest parent makedirs would start from
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--out {args.out}: {existing} is a file, not a folder")


def open_restorer(args) -> Restorer:
    """The run's Restorer at the flags' settings; BundleError for a path that holds no restoration run."""
    bundle = inference.load(args.workdir)
    restorer = Restorer(bundle, steps=args.steps, window_rule=args.window_rule, tile=args.tile, overlap=args.overlap,
                        chunk_frames=args.chunk_frames, prompt=args.prompt)
    if restorer.channels not in (1, 3):
        raise BundleError(f"this run's frames have {restorer.channels} channels; files are read as RGB or grayscale")
    return restorer


def chunk_key(seed: int, chunk: int) -> jax.Array:
    """The key of a file's chunk: key(seed) for the first, so that an image is `restorer(image, key(seed))`."""
    key = jax.random.key(seed)
    return key if chunk == 0 else jax.random.fold_in(key, chunk)


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] -> float32 in [-1, 1] (the data pipeline's scale)."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def read_image(path: str, channels: int) -> np.ndarray:
    """An image file as uint8 [H, W, channels], upright as viewers show it."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):  # 16-bit grayscale: PIL's 8-bit conversion would clip it at 255
            image = Image.fromarray(np.round(np.asarray(image, np.float32) / 257.0).astype(np.uint8))
        image = image.convert("L" if channels == 1 else "RGB")
        return np.asarray(image, np.uint8).reshape(image.height, image.width, channels)


def restore_image(restorer: Restorer, job: Job, seed: int) -> dict:
    pixels = read_image(job.source, restorer.channels)
    restored = to_uint8(restorer(to_unit(pixels), chunk_key(seed, 0)))
    Image.fromarray(restored[..., 0] if restorer.channels == 1 else restored).save(job.target)
    h, w = pixels.shape[:2]
    return {"width": w, "height": h, "frames": 1, "out_width": w, "out_height": h}


def video_chunks(frames: Iterator, shape: tuple[int, int], size: int, channels: int) -> Iterator[np.ndarray]:
    """Decoded PyAV frames -> uint8 [<= size, H, W, channels] chunks, every frame at `shape` (H, W)."""
    chunk = []
    for frame in frames:
        frame = frame.reformat(width=shape[1], height=shape[0], format="gray" if channels == 1 else "rgb24")
        chunk.append(frame.to_ndarray().reshape(*shape, channels))
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def frame_rate(stream) -> Fraction:
    """The source's average frame rate (a variable-rate video is written at its average), 25 if unknown."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return Fraction(25)


def restore_video(restorer: Restorer, job: Job, seed: int) -> dict:
    """Decode, restore and encode one chunk of frames at a time (memory does not grow with the length)."""
    import av  # optional heavy dependency: only videos need it

    with av.open(job.source) as source, av.open(job.target, "w") as target:
        stream = source.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = source.decode(stream)
        first = next(decoded, None)
        if first is None:  # check_readable decoded one frame; only a file changed since can get here
            raise ValueError(f"{job.source}: no frame could be decoded")
        h, w, rate = first.height, first.width, frame_rate(stream)
        encoder = target.add_stream("libx264", rate=rate)
        encoder.height, encoder.width = h + h % 2, w + w % 2
        encoder.pix_fmt = "yuv420p"
        encoder.options = {"crf": CRF}
        # A phone's portrait video is stored sideways and shown upright by its rotation tag: copy the tag
        # (PyAV 18 reads and writes it; with an older PyAV the output plays as stored).
        rotation = getattr(first, "rotation", 0)
        if rotation and hasattr(encoder, "set_display_rotation"):
            encoder.set_display_rotation(rotation)
        frames = 0
        chunks = video_chunks(itertools.chain([first], decoded), (h, w), restorer.chunk_frames, restorer.channels)
        for c, chunk in enumerate(chunks):
            restored = to_uint8(restorer(to_unit(chunk), chunk_key(seed, c)))
            # yuv420p needs even sizes: repeat the last row / column rather than lose one.
            restored = np.pad(restored, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for frame in np.repeat(restored, 3, axis=-1) if restorer.channels == 1 else restored:
                target.mux(encoder.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            frames += len(chunk)
        target.mux(encoder.encode())
    return {"width": w, "height": h, "frames": frames, "out_width": w + w % 2, "out_height": h + h % 2,
            "fps": float(rate)}


@cli.entry("seedjax.tools.restore")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.tools.restore", __doc__)
    parser.add_argument("--workdir", required=True, help="a restoration run, or workdir/checkpoints/N")
    parser.add_argument("--input", required=True, help="an image, a video or a folder of them")
    parser.add_argument("--out", required=True, help="the folder the restored files and summary.json go to")
    parser.add_argument("--steps", type=int, default=0, help="sampler steps (default: the run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window_rule", default="", help="adaptive | fixed | grow (default: the run's)")
    parser.add_argument("--tile", type=int, default=0, help="tile side in pixels (0: whole frames)")
    parser.add_argument("--overlap", type=int, default=8, help="pixels shared by neighbouring tiles")
    parser.add_argument("--chunk_frames", type=int, default=0, help="frames restored together (default: the run's)")
    parser.add_argument("--prompt", default="", help="a caption (default: the empty one)")
    args = parser.parse(argv)
    # The user names the files: a very large image is theirs to restore, not a decompression bomb.
    Image.MAX_IMAGE_PIXELS = None
    try:
        check_flags(args)
        files, skipped = list_inputs(args.input)
        jobs = plan(files, args.out)
        for job in jobs:
            check_readable(job)
        restorer = open_restorer(args)
    except (BundleError, ValueError) as e:
        print(f"restore: {e}", file=sys.stderr)
        return 2
    if skipped:
        print(f"restore: skipped {skipped} entr{'y' if skipped == 1 else 'ies'} of {args.input} (not image or video "
              f"files, hidden files, sub-folders)")
    os.makedirs(args.out, exist_ok=True)
    rows, start = [], time.perf_counter()
    for job in jobs:
        t0 = time.perf_counter()
        row = (restore_video if job.video else restore_image)(restorer, job, args.seed)
        row = {"input": job.source, "output": job.target, **row, "seconds": round(time.perf_counter() - t0, 3),
               "nfe": restorer.nfe}
        rows.append(row)
        print(f"restore: {os.path.basename(job.source)} {row['width']}x{row['height']}, {row['frames']} "
              f"frame{'s' if row['frames'] != 1 else ''}, {row['seconds']:.2f} s -> {job.target}", flush=True)
    seconds = time.perf_counter() - start
    model = restorer.config.model
    settings = {"workdir": args.workdir, "input": args.input, "steps": int(restorer.config.sampling.num_steps),
                "seed": args.seed, "window_rule": model.window.rule if model.attention == "window" else "",
                "tile": args.tile, "overlap": args.overlap, "chunk_frames": restorer.chunk_frames,
                "prompt": args.prompt, "nfe": restorer.nfe}
    summary = os.path.join(args.out, "summary.json")
    with open(summary, "w") as f:
        json.dump({"settings": settings, "files": rows, "seconds": round(seconds, 3)}, f, indent=1)
    frames = sum(row["frames"] for row in rows)
    print(f"restore: {len(rows)} file(s), {frames} frame(s) at {restorer.nfe} NFE in {seconds:.1f} s; wrote {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
