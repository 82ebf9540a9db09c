"""Run an exported generator with nothing but jax and numpy (no flax, no seedjax models).

    python -m seedjax.serving.run_exported --model=EXPORT_DIR --prompt="a handwritten 7" [--prompt=...] \\
        [--num=4] [--seed=0] [--size=16x16] [--guidance=G] [--out=grid.png | pixels.npy]
    python -m seedjax.serving.run_exported --model=VIDEO_EXPORT --prompt="shot 1: a red 3 moving left; shot 2: ..." \\
        [--size=9x16x16] [--first_frame=frame.npy] [--out=filmstrip.png | pixels.npy]

Reads EXPORT_DIR/manifest.json, params.safetensors and stablehlo/*.jaxexport (written by
`python -m seedjax.export --formats=stablehlo`), checks their sha256 against the manifest,
tokenizes the prompts (UTF-8 bytes, as the exporting run did), draws the noise from the seed
and calls the StableHLO program. Same prompts, num and seed as `seedjax.tools.sample` give the
same images: rows of the PNG grid are prompts, columns samples; `.npy` keeps the float pixels
[N, H, W, C] in [-1, 1]. A video export (sizes FxHxW) makes clips [N, F, H, W, C]: the PNG is a
filmstrip, a clip a row; "shot 1: ...; shot 2: ..." prompts are multi-shot (the frames split
evenly between the shots, as `seedjax.tools.sample` does) and `--first_frame` (an .npy of
[H, W, C] pixels in [-1, 1]) starts every clip from that frame (image-to-video).
Exit codes: 0 written, 2 bad arguments or export directory.

As a library (what `seedjax.serve` does): `ExportedGenerator(dir).generate(captions, noise, guidance, size)`.
This module imports only the standard library, numpy, jax and seedjax.serving.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.serving import png

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


class ExportError(ValueError):
    """An export directory that cannot be run (exit 2)."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A safetensors file as numpy arrays (the format: u64 header length, JSON header, raw bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        out[name] = np.frombuffer(data, dtype, count=(end - start) // dtype.itemsize,
                                  offset=8 + length + start).reshape(entry["shape"])
    return out


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_size(text: str) -> tuple[int, ...]:
    """'16x16' (an image size) or '9x16x16' (a video's frames x height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ExportError(f"size {text!r}: expected HxW (e.g. 16x16) or FxHxW (videos, e.g. 9x16x16)")
    return tuple(int(p) for p in parts)


def size_name(size: tuple[int, ...]) -> str:
    return "x".join(map(str, size))


def split_shots(caption: str) -> list[str]:
    """'shot 1: a red 3 moving left; shot 2: a blue 5 moving up' -> one caption per shot; any other
    caption is one shot (the rule of `seedjax.inference.bundle.split_shots`, which this module
    cannot import: tests/test_export.py holds the two to the same answers)."""
    text = caption.strip()
    parts = [p.strip() for p in re.split(r"(?:^|;)\s*shot \d+:\s*", text) if p.strip()]
    return parts if len(parts) > 1 and text.startswith("shot ") else [caption]


class ExportedGenerator:
    """The StableHLO programs of an export directory with their parameters on the default device."""

    def __init__(self, directory: str, verify: bool = True):
        path = os.path.join(directory, "manifest.json")
        if not os.path.isfile(path):
            raise ExportError(f"{directory}: no manifest.json (not an export directory of python -m seedjax.export)")
        with open(path) as f:
            self.manifest = json.load(f)
        if "stablehlo" not in self.manifest["formats"]:
            raise ExportError(f"{directory}: exported without the stablehlo format (formats "
                              f"{self.manifest['formats']}); export again with --formats=stablehlo")
        programs = self.manifest["stablehlo"]
        files = ["params.safetensors", *(p["file"] for p in programs.values())]
        for name in files:
            full = os.path.join(directory, name)
            if not os.path.isfile(full):
                raise ExportError(f"{full}: missing")
            if verify and sha256(full) != self.manifest["files"][name]["sha256"]:
                raise ExportError(f"{full}: sha256 differs from manifest.json (a damaged or altered file)")
        self.params = jax.device_put(read_safetensors(os.path.join(directory, "params.safetensors")))
        self.sizes = {}
        self.programs = {}
        for key, program in programs.items():
            size = tuple(program[k] for k in ("frames", "height", "width") if k in program)
            with open(os.path.join(directory, program["file"]), "rb") as f:
                self.programs[size] = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
            self.sizes[size] = program
        self.is_video = self.manifest.get("kind") == "video"
        self.tokenizer = self.manifest["tokenizer"]
        self.default_size = tuple(self.manifest["sizes"][0])
        self.guidance_kind = self.manifest["sampler"]["guidance_kind"]
        self.default_guidance = float(self.manifest["sampler"]["default_guidance"])
        self.max_batch = int(self.manifest["max_batch"])
        self._noise_fns = {}

    def tokenize(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """UTF-8 bytes shifted past the special ids, between BOS and EOS, padded (the run's tokenizer)."""
        t = self.tokenizer
        length = t["max_len"]
        tokens = np.full((len(captions), length), t["pad"], np.int32)
        for i, caption in enumerate(captions):
            body = np.frombuffer(caption.encode("utf-8"), np.uint8)[: length - 2].astype(np.int32) + t["offset"]
            tokens[i, 0], tokens[i, 1:1 + len(body)], tokens[i, 1 + len(body)] = t["bos"], body, t["eos"]
        return tokens, tokens != t["pad"]

    def noise(self, seed: int, n: int, size: tuple[int, ...]) -> np.ndarray:
        """What `seedjax.tools.sample --seed=seed` starts n images from (jax's default PRNG)."""
        shape = self.sizes[size]["noise_shape"]
        return np.asarray(jax.random.normal(jax.random.key(seed), (n, *shape), jnp.float32))

    def noise_of_seeds(self, seeds: np.ndarray, n: int, size: tuple[int, ...]) -> np.ndarray:
        """`noise(seed, n, size)` for every seed, [len(seeds), n, ...], bit for bit, in one compiled
        call (a server draws a whole batch's noise at once: one eager draw per request cost about
        as much as a 1-NFE batch). One compile per (len(seeds), n, size)."""
        key = (len(seeds), n, size)
        if key not in self._noise_fns:
            shape = (n, *self.sizes[size]["noise_shape"])
            self._noise_fns[key] = jax.jit(jax.vmap(lambda s: jax.random.normal(jax.random.key(s), shape, jnp.float32)))
        return np.asarray(self._noise_fns[key](np.asarray(seeds, np.int32)))

    def generate(self, captions: list[str], noise: np.ndarray, guidance: np.ndarray, size: tuple[int, ...],
                 first_frames: list[np.ndarray | None] | None = None) -> np.ndarray:
        """Pixels [N, H, W, C] (a video export: [N, F, H, W, C]) in [-1, 1] for the captions, one
        noise row and guidance scale each; a video row may start from its first frame [H, W, C]."""
        if size not in self.programs:
            raise ExportError(f"size {size_name(size)} was not exported (sizes: {self.size_names()})")
        noise, guidance = np.asarray(noise, np.float32), np.asarray(guidance, np.float32)
        if not self.is_video:
            tokens, mask = self.tokenize(captions)
            return np.asarray(self.programs[size](self.params, tokens, mask, noise, guidance))
        return np.asarray(self.programs[size](self.params, *self.video_inputs(captions, size, first_frames),
                                              noise, guidance))

    def video_inputs(self, captions: list[str], size: tuple[int, ...], first_frames=None) -> tuple[np.ndarray, ...]:
        """(shot_tokens, shot_mask, frame_shot, first_frame, first_mask) of the video program."""
        program = self.sizes[size]
        n, shots, length, frames = len(captions), program["max_shots"], self.tokenizer["max_len"], program["model_frames"]
        shot_tokens = np.full((n, shots, length), self.tokenizer["pad"], np.int32)
        frame_shot = np.zeros((n, frames), np.int32)
        for i, caption in enumerate(captions):
            parts = split_shots(caption)
            if len(parts) > shots:
                raise ExportError(f"{len(parts)} shots in one prompt; this model takes at most {shots}")
            shot_tokens[i, : len(parts)] = self.tokenize(parts)[0]
            frame_shot[i] = np.arange(frames) * len(parts) // frames
        frame_shape = (size[1], size[2], program["channels"])
        first = np.zeros((n, *frame_shape), np.float32)
        first_mask = np.zeros((n,), np.float32)
        for i, frame in enumerate(first_frames or []):
            if frame is None:
                continue
            if np.shape(frame) != frame_shape:
                raise ExportError(f"first frame of shape {np.shape(frame)}; this size takes {frame_shape} (pixels in [-1, 1])")
            first[i], first_mask[i] = frame, 1.0
        return shot_tokens, shot_tokens != self.tokenizer["pad"], frame_shot, first, first_mask

    def sample(self, prompts: list[str], num: int, seed: int, size: tuple[int, ...],
               guidance: float | None = None, first_frame: np.ndarray | None = None) -> np.ndarray:
        """`num` samples per prompt, prompt-major, from one seed: `seedjax.tools.sample`'s images (or clips)."""
        captions = [p for p in prompts for _ in range(num)]
        scale = self.default_guidance if guidance is None else guidance
        firsts = None if first_frame is None else [first_frame] * len(captions)
        return self.generate(captions, self.noise(seed, len(captions), size), np.full(len(captions), scale), size,
                             firsts)

    def size_names(self) -> str:
        return ", ".join(map(size_name, self.programs))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2 (main), not argparse's usage block
        raise ExportError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="seedjax.serving.run_exported", allow_abbrev=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("--num", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--first_frame", default="", help="video exports: an .npy [H, W, C] in [-1, 1] to start from")
    parser.add_argument("--out", default="samples.png")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if args.num < 1:
            raise ExportError(f"--num must be >= 1, got {args.num}")
        if not args.out.endswith((".png", ".npy")):
            raise ExportError(f"--out {args.out!r}: expected a .png or .npy file")
        model = ExportedGenerator(args.model)
        size = parse_size(args.size) if args.size else model.default_size
        if size not in model.programs:
            raise ExportError(f"--size {args.size}: not exported (sizes: {model.size_names()})")
        if args.guidance is not None and model.guidance_kind is None:
            raise ExportError("--guidance: this model samples unguided (no CFG, no guidance embedder)")
        first = read_first_frame(args.first_frame, model) if args.first_frame else None
        pixels = model.sample(args.prompt, args.num, args.seed, size, args.guidance, first)
    except ExportError as e:
        print(f"run_exported: {e}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.out.endswith(".npy"):
        np.save(args.out, pixels)
    else:
        frames = pixels.reshape(-1, *pixels.shape[-3:])  # a video's clips: one row of frames each
        cols = pixels.shape[1] if pixels.ndim == 5 else args.num
        with open(args.out, "wb") as f:
            f.write(png.encode(png.grid(png.to_uint8(frames), cols=cols)))
    what = "clips" if pixels.ndim == 5 else "images"
    print(f"run_exported: {len(pixels)} {what} {size_name(size)}; wrote {args.out}")
    return 0


def read_first_frame(path: str, model: ExportedGenerator) -> np.ndarray:
    """--first_frame: an .npy of [H, W, C] float pixels in [-1, 1] (loaded without pickles)."""
    if not model.is_video:
        raise ExportError("--first_frame: this export generates images")
    if not path.endswith(".npy") or not os.path.isfile(path):
        raise ExportError(f"--first_frame {path!r}: expected an existing .npy file of [H, W, C] pixels in [-1, 1]")
    try:
        frame = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ExportError(f"--first_frame {path!r}: not a plain numpy array ({e})") from None
    if frame.ndim != 3 or not np.all(np.isfinite(frame)) or np.abs(frame).max() > 1.0:
        raise ExportError(f"--first_frame {path!r}: expected [H, W, C] pixels in [-1, 1], got shape {frame.shape}")
    return frame.astype(np.float32)


if __name__ == "__main__":
    sys.exit(main())
