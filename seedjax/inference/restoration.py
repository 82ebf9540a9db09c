"""Restore images and clips of any size with a restoration run's bundle (SeedVR / SeedVR2).

    bundle = seedjax.inference.load("runs/seedvr/restore_adversarial")
    restore = Restorer(bundle)                           # the run's own sampler (1 step here)
    out = restore(clip, jax.random.key(0))               # [F, H, W, C] in [-1, 1] -> the same shape

A clip (an image is one frame) is cut into chunks of `chunk_frames` frames (default: the training
clips' length) and, when a side exceeds `tile` pixels, into overlapping spatial tiles that are
blended back with linear ramps over the overlap; each piece is padded (edge values) to whole
patches, restored at its own size and cropped back. Window attention makes any size a valid input:
`window_rule` ('adaptive' | 'fixed' | 'grow') overrides the rule the run was trained with
(`model.window.rule`), to compare them. One compiled function per piece shape.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from seedjax.diffusion import tasks
from seedjax.inference.bundle import Bundle, BundleError
from seedjax.models import adaptive_windows, text
from seedjax.models.geometry import Geometry
from seedjax.train.params import to_pixels


def _with_window_rule(model, config, rule: str):
    """(model, config) with model.window.rule = `rule`: a second module sharing the parameters."""
    if rule not in adaptive_windows.RULES:
        raise BundleError(f"window rule {rule!r} is not one of {adaptive_windows.RULES}")
    if config.model.attention != "window":
        raise BundleError(f"this run's model has attention {config.model.attention!r}, not windows; "
                          f"there is no window rule to set")
    config = copy.deepcopy(config)
    with config.unlocked():
        config.model.window.rule = rule
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, state)
    model.dit.cfg = ml_collections.FrozenConfigDict(config.model)
    return model, config


def ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """[length] blending weights of a tile: rising over the first `overlap` pixels unless it starts
    the image, falling over the last `overlap` unless it ends it (never 0: every pixel counts)."""
    w = np.ones(length, np.float32)
    edge = (np.arange(min(overlap, length)) + 1.0) / (overlap + 1.0)
    if not at_start:
        w[: edge.size] = np.minimum(w[: edge.size], edge)
    if not at_end:
        w[length - edge.size:] = np.minimum(w[length - edge.size:], edge[::-1])
    return w


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` pixels covering [0, size) with at least `overlap` shared pixels."""
    if tile <= 0 or size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


class Restorer:
    """A restoration bundle's restorer: see the module docstring. `steps` (0 = the run's) sets the
    sampler's steps; `prompt` an optional caption (default: the empty one, as in training's dropout)."""

    def __init__(self, bundle: Bundle, *, steps: int = 0, window_rule: str = "", tile: int = 0, overlap: int = 8,
                 chunk_frames: int = 0, prompt: str = ""):
        if not bundle.config.diffusion.get("restore", False):
            raise BundleError(f"{bundle.workdir}: not a restoration run (config.diffusion.restore is off)")
        if bundle.codec is not None:
            raise BundleError(f"{bundle.workdir}: restoration runs in pixel space here; this run is a latent one")
        if tile and (tile <= overlap or overlap < 0):
            raise BundleError(f"tile={tile} must exceed overlap={overlap} >= 0")
        bundle = bundle.with_sampling(steps=steps)
        self.config, self.sampler = bundle.config, bundle.sampler
        model = bundle.model
        if window_rule:
            model, self.config = _with_window_rule(model, self.config, window_rule)
        self.patch = int(self.config.input.patch_size)
        self.channels = bundle.geometry.channels
        self.tile, self.overlap = int(tile), int(overlap)
        self.chunk_frames = int(chunk_frames or self.config.data.video.num_frames)
        length = int(self.config.data.max_text_len)
        if prompt:
            caption = bundle.prompts([prompt])
            self.tokens, self.mask = np.asarray(caption["tokens"]), np.asarray(caption["text_mask"])
        else:
            tokens, mask = text.empty_caption(length)
            self.tokens, self.mask = np.asarray(tokens)[None], np.asarray(mask)[None]
        graphdef, self.params = nnx.split(model)
        sampler, config = self.sampler, self.config

        def restore_piece(params, degraded, tokens, mask, rng):
            net = nnx.merge(graphdef, params)
            geometry = Geometry.of_array(degraded, self.patch)
            batch = tasks.restoration_task({"tokens": tokens, "text_mask": mask}, degraded)
            return jnp.clip(to_pixels(sampler.generate(net, batch, geometry, rng), config), -1.0, 1.0)

        self._restore_piece = jax.jit(restore_piece)

    @property
    def nfe(self) -> int:
        return self.sampler.nfe

    def piece(self, degraded: np.ndarray, rng: jax.Array) -> np.ndarray:
        """One piece [F, H, W, C] restored at its size (padded to whole patches, cropped back)."""
        f, h, w, _ = degraded.shape
        pad = ((0, 0), (0, -h % self.patch), (0, -w % self.patch), (0, 0))
        padded = np.pad(degraded, pad, mode="edge")[None].astype(np.float32)
        out = self._restore_piece(self.params, padded, self.tokens, self.mask, rng)
        return np.asarray(out)[0, :, :h, :w]

    def __call__(self, clip: np.ndarray, rng: jax.Array) -> np.ndarray:
        """clip [F, H, W, C] (or an image [H, W, C]) float in [-1, 1] -> its restoration, same shape."""
        clip = np.asarray(clip, np.float32)
        image = clip.ndim == 3
        clip = clip[None] if image else clip
        if clip.ndim != 4 or clip.shape[-1] != self.channels:
            raise ValueError(f"restore: expected [F, H, W, {self.channels}] or [H, W, {self.channels}], "
                             f"got {clip.shape}")
        f, h, w, _ = clip.shape
        out = np.zeros_like(clip)
        for c, f0 in enumerate(range(0, f, self.chunk_frames)):
            chunk = clip[f0:f0 + self.chunk_frames]
            total = np.zeros_like(chunk)
            weight = np.zeros((1, h, w, 1), np.float32)
            rows, cols = tile_starts(h, self.tile, self.overlap), tile_starts(w, self.tile, self.overlap)
            for i, y in enumerate(rows):
                for j, x in enumerate(cols):
                    th, tw = min(self.tile or h, h), min(self.tile or w, w)
                    key = jax.random.fold_in(jax.random.fold_in(rng, c), i * len(cols) + j)
                    restored = self.piece(chunk[:, y:y + th, x:x + tw], key)
                    ramp_2d = np.outer(ramp(th, self.overlap, i == 0, i == len(rows) - 1),
                                       ramp(tw, self.overlap, j == 0, j == len(cols) - 1))[None, :, :, None]
                    total[:, y:y + th, x:x + tw] += restored * ramp_2d
                    weight[:, y:y + th, x:x + tw] += ramp_2d
            out[f0:f0 + self.chunk_frames] = total / weight
        return out[0] if image else out
