"""Run an exported generator with nothing but jax and numpy (no flax, no seedjax models).

    python -m seedjax.serving.run_exported --model=EXPORT_DIR --prompt="a handwritten 7" [--prompt=...] \\
        [--num=4] [--seed=0] [--size=16x16] [--guidance=G] [--out=grid.png | pixels.npy]

Reads EXPORT_DIR/manifest.json, params.safetensors and stablehlo/*.jaxexport (written by
`python -m seedjax.export --formats=stablehlo`), checks their sha256 against the manifest,
tokenizes the prompts (UTF-8 bytes, as the exporting run did), draws the noise from the seed
and calls the StableHLO program. Same prompts, num and seed as `seedjax.tools.sample` give the
same images: rows of the PNG grid are prompts, columns samples; `.npy` keeps the float pixels
[N, H, W, C] in [-1, 1]. Exit codes: 0 written, 2 bad arguments or export directory.

As a library (what `seedjax.serve` does): `ExportedGenerator(dir).generate(captions, noise, guidance, size)`.
This module imports only the standard library, numpy, jax and seedjax.serving.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ExportError(f"size {text!r}: expected HxW, e.g. 16x16") from None
    return h, w


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
            size = (program["height"], program["width"])
            with open(os.path.join(directory, program["file"]), "rb") as f:
                self.programs[size] = jax.jit(jax.export.deserialize(bytearray(f.read())).call)
            self.sizes[size] = program
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

    def noise(self, seed: int, n: int, size: tuple[int, int]) -> np.ndarray:
        """What `seedjax.tools.sample --seed=seed` starts n images from (jax's default PRNG)."""
        shape = self.sizes[size]["noise_shape"]
        return np.asarray(jax.random.normal(jax.random.key(seed), (n, *shape), jnp.float32))

    def noise_of_seeds(self, seeds: np.ndarray, n: int, size: tuple[int, int]) -> np.ndarray:
        """`noise(seed, n, size)` for every seed, [len(seeds), n, ...], bit for bit, in one compiled
        call (a server draws a whole batch's noise at once: one eager draw per request cost about
        as much as a 1-NFE batch). One compile per (len(seeds), n, size)."""
        key = (len(seeds), n, size)
        if key not in self._noise_fns:
            shape = (n, *self.sizes[size]["noise_shape"])
            self._noise_fns[key] = jax.jit(jax.vmap(lambda s: jax.random.normal(jax.random.key(s), shape, jnp.float32)))
        return np.asarray(self._noise_fns[key](np.asarray(seeds, np.int32)))

    def generate(self, captions: list[str], noise: np.ndarray, guidance: np.ndarray,
                 size: tuple[int, int]) -> np.ndarray:
        """Pixels [N, H, W, C] in [-1, 1] for the captions, one noise row and guidance scale each."""
        if size not in self.programs:
            raise ExportError(f"size {size[0]}x{size[1]} was not exported (sizes: {self.size_names()})")
        tokens, mask = self.tokenize(captions)
        out = self.programs[size](self.params, tokens, mask, np.asarray(noise, np.float32),
                                  np.asarray(guidance, np.float32))
        return np.asarray(out)

    def sample(self, prompts: list[str], num: int, seed: int, size: tuple[int, int],
               guidance: float | None = None) -> np.ndarray:
        """`num` images per prompt, prompt-major, from one seed: `seedjax.tools.sample`'s images."""
        captions = [p for p in prompts for _ in range(num)]
        scale = self.default_guidance if guidance is None else guidance
        return self.generate(captions, self.noise(seed, len(captions), size), np.full(len(captions), scale), size)

    def size_names(self) -> str:
        return ", ".join(f"{h}x{w}" for h, w in self.programs)


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
    except ExportError as e:
        print(f"run_exported: {e}", file=sys.stderr)
        return 2
    pixels = model.sample(args.prompt, args.num, args.seed, size, args.guidance)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.out.endswith(".npy"):
        np.save(args.out, pixels)
    else:
        with open(args.out, "wb") as f:
            f.write(png.encode(png.grid(png.to_uint8(pixels), cols=args.num)))
    print(f"run_exported: {len(pixels)} images {size[0]}x{size[1]}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
