"""Stamp (defect) detector: does an image carry a watermark, a mosaic or a subtitle bar?

A small multi-label CNN (`seedjax.models.small_cnn.SmallCNN` with global pooling, one sigmoid per
defect kind) trained on `digit_scenes` with and without stamped defects (train glyphs, training seed),
plus extra mosaics pixelated on device (`add_mosaic`), with augmentation that imitates generated
images (blur, noise, color-balance shifts, horizontal flips). It is evaluated on held-out scenes
(test glyphs, an unseen seed) and the precision and recall are stored with the cached weights
(`metadata`). Like the digit classifier it trains once (seeded, deterministic, about a minute of
CPU) and is cached as safetensors under `$SEEDJAX_CACHE`.

Why a learned detector rather than hand-written rules: the samples it judges come from diffusion
models, whose stamps are smudged copies (blurred text, soft-edged mosaic blocks); rules keyed to
crisp block edges or glyph strokes miss them, a network trained with blur does not.

Images in: [N, H, W, 3] float in [-1, 1] (or uint8), any size (resized to `image_size`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines.sources.scenes import DEFECT_KINDS, MOSAIC_BLOCK, MOSAIC_SIDE, SceneConfig, make_scene
from seedjax.models import augment, small_cnn

CODE_VERSION = "1"
_HELD_OUT_SEED = 1_000_003  # never used for training scenes


@dataclasses.dataclass(frozen=True)
class StampSettings:
    image_size: int = 64
    num_train_scenes: int = 3000
    defect_fraction: float = 0.6
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    channels: tuple[int, ...] = (8, 16, 32, 64)
    first_stride: int = 2
    feature_dim: int = 64
    max_blur_sigma: float = 0.7
    extra_mosaic_fraction: float = 0.25  # of each batch, pixelated on device (see add_mosaic)


def _to_unit_rgb(images, image_size: int) -> jax.Array:
    x = jnp.asarray(images)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else (x.astype(jnp.float32) + 1.0) / 2.0
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), "linear", antialias=True)
    return jnp.clip(x, 0.0, 1.0)


def _color_jitter(image: jax.Array, key: jax.Array) -> jax.Array:
    """Per-channel gain (color balance, brightness) and a raised black level."""
    k_gain, k_black = jax.random.split(key)
    gain, black = augment.materialize(jax.random.uniform(k_gain, (3,), minval=0.8, maxval=1.15),
                                      jax.random.uniform(k_black, (), maxval=0.06))
    return jnp.clip(black + image * gain, 0.0, 1.0)


def _flip(image: jax.Array, key: jax.Array) -> jax.Array:
    return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def add_mosaic(image: jax.Array, key: jax.Array) -> jax.Array:
    """Pixelate a random square patch of [S, S, 3] like the scene generator does, on device.

    The patch is centered on a pixel drawn with probability rising steeply with its brightness,
    so it lands on a digit (a mosaic over empty background is invisible). Training on these,
    next to the generator's own mosaics, gives the detector unlimited distinct mosaics: with
    only a few thousand it memorises the training scenes instead of learning the pattern.
    """
    size = image.shape[0]
    k = jax.random.split(key, 3)
    block = jnp.maximum(4, jnp.round(size * jax.random.uniform(k[0], (), minval=MOSAIC_BLOCK[0],
                                                                maxval=MOSAIC_BLOCK[1]))).astype(jnp.int32)
    side = jnp.round(size * jax.random.uniform(k[1], (), minval=MOSAIC_SIDE[0], maxval=MOSAIC_SIDE[1]))
    side = jnp.maximum(2 * block, side.astype(jnp.int32))
    center = jax.random.categorical(k[2], 8.0 * jnp.log(image.max(-1).ravel() + 1e-3))
    y0 = jnp.clip(center // size - side // 2, 0, size - side)
    x0 = jnp.clip(center % size - side // 2, 0, size - side)
    block, y0, x0, side = augment.materialize(block, y0, x0, side)
    pos = jnp.arange(size)
    inside_y, inside_x = (pos >= y0) & (pos < y0 + side), (pos >= x0) & (pos < x0 + side)
    inside = inside_y[:, None] & inside_x[None, :]
    per_row = size // 4 + 1  # blocks are at least 4 px
    cell = (jnp.clip((pos - y0) // block, 0, per_row - 1)[:, None] * per_row
            + jnp.clip((pos - x0) // block, 0, per_row - 1)[None, :])
    cell = jnp.where(inside, cell, per_row * per_row).ravel()  # outside: a spare segment
    sums = jax.ops.segment_sum(image.reshape(-1, 3), cell, per_row * per_row + 1)
    counts = jax.ops.segment_sum(jnp.ones_like(cell, jnp.float32), cell, per_row * per_row + 1)
    means = (sums / jnp.maximum(counts, 1.0)[:, None])[cell].reshape(image.shape)
    return jnp.where(inside[..., None], means, image)


def augment_scenes(images01: jax.Array, key: jax.Array, max_blur_sigma: float = 0.7) -> jax.Array:
    """Generated-image distortions for [N, S, S, 3] in [0, 1]: flip, blur, color, noise."""
    blur = functools.partial(augment.random_blur, max_sigma=max_blur_sigma)
    k_stages, k_noise = jax.random.split(key)
    images01 = augment.pipeline((_flip, blur, _color_jitter), images01, k_stages)
    return augment.add_noise(images01, k_noise, max_sigma=0.05)


def _labels(scenes: list[dict]) -> np.ndarray:
    """Multi-hot [N, 3] over DEFECT_KINDS."""
    out = np.zeros((len(scenes), len(DEFECT_KINDS)), np.float32)
    for i, s in enumerate(scenes):
        for kind in s["defect_kind"]:
            if kind >= 0:
                out[i, kind] = 1.0
    return out


def labelled_scenes(num: int, split: str, seed: int, defect_fraction: float, image_size: int = 64):
    """(images uint8 [num, S, S, 3], multi-hot defect labels [num, 3]) from the scene generator."""
    cfg = SceneConfig(image_size=image_size, defect_fraction=defect_fraction, split=split)
    scenes = [make_scene(i, cfg, seed) for i in range(num)]
    return np.stack([s["image"] for s in scenes]), _labels(scenes)


class StampDetector:
    """A trained stamp CNN: `probabilities(images)` [N, 3] and `detect(images)` (booleans per kind)."""

    def __init__(self, model: small_cnn.SmallCNN, image_size: int, metadata: dict):
        self.image_size = image_size
        self.metadata = metadata
        graphdef, state = nnx.split(model)

        def apply(state, images):
            return jax.nn.sigmoid(nnx.merge(graphdef, state)(_to_unit_rgb(images, image_size)))

        self._apply = jax.jit(apply)
        self._state = state

    def probabilities(self, images) -> np.ndarray:
        shape = getattr(images, "shape", None)
        if shape is None or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"stamp detector: images must be RGB [N, H, W, 3], got shape {shape}")
        return small_cnn.batched_apply(lambda x: self._apply(self._state, x), np.asarray(images))

    def detect(self, images, threshold: float = 0.5) -> dict[str, np.ndarray]:
        found = self.probabilities(images) >= threshold
        out = {kind: found[:, k] for k, kind in enumerate(DEFECT_KINDS)}
        out["any"] = found.any(-1)
        return out


def precision_recall(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    predicted, actual = np.asarray(predicted, bool), np.asarray(actual, bool)
    true_pos = float((predicted & actual).sum())
    return true_pos / max(predicted.sum(), 1), true_pos / max(actual.sum(), 1)


def held_out_report(detector: StampDetector, num: int = 600) -> dict[str, float]:
    """Precision and recall per kind and for 'any' on held-out scenes (test glyphs, unseen seed)."""
    images, labels = labelled_scenes(num, "test", _HELD_OUT_SEED, 0.5, detector.image_size)
    found = detector.detect(images)
    report = {}
    for k, kind in enumerate(DEFECT_KINDS + ("any",)):
        actual = labels.any(-1) if kind == "any" else labels[:, k]
        report[f"{kind}_precision"], report[f"{kind}_recall"] = precision_recall(found[kind], actual)
    return report


def _train(model: small_cnn.SmallCNN, settings: StampSettings, log_every: int = 0) -> dict:
    images, labels = labelled_scenes(settings.num_train_scenes, "train", settings.seed, settings.defect_fraction,
                                     settings.image_size)

    mosaic = DEFECT_KINDS.index("mosaic")
    num_extra = max(1, round(settings.extra_mosaic_fraction * settings.batch_size))

    def make_batch(data, key):
        images, labels = data
        k_idx, k_mosaic, k_aug = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (settings.batch_size,), 0, images.shape[0])
        x, y = images[idx].astype(jnp.float32) / 255.0, labels[idx]
        # The batch is a random draw, so pixelating its first rows is a random choice of scenes.
        x = x.at[:num_extra].set(jax.vmap(add_mosaic)(x[:num_extra], jax.random.split(k_mosaic, num_extra)))
        y = y.at[:num_extra, mosaic].set(1.0)
        return augment_scenes(x, k_aug, settings.max_blur_sigma), y

    def loss_fn(logits, labels):
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

    small_cnn.fit(model, (images, labels), make_batch, loss_fn, steps=settings.steps, lr=settings.lr,
                  seed=settings.seed, log_every=log_every)
    report = held_out_report(StampDetector(model, settings.image_size, {}))
    return {**report, "code_version": CODE_VERSION}


@functools.lru_cache(maxsize=None)
def get_stamp_detector(image_size: int = 64, **overrides) -> StampDetector:
    """The stamp detector at working resolution `image_size` (trained once, then loaded from cache)."""
    settings = StampSettings(image_size=image_size, **overrides)
    make = lambda: small_cnn.SmallCNN(3, settings.image_size, len(DEFECT_KINDS), channels=settings.channels,
                                      feature_dim=settings.feature_dim, first_stride=settings.first_stride,
                                      global_pool=True, rngs=nnx.Rngs(settings.seed))
    key = {"model": "stamp_detector", "code_version": CODE_VERSION, **dataclasses.asdict(settings)}
    model, metadata = small_cnn.load_or_train("stamp_detector", key, make, lambda m: _train(m, settings))
    return StampDetector(model, settings.image_size, metadata)


def detect_stamps(images, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """dict(watermark, mosaic, subtitle, any) of bool [N] for RGB images in [-1, 1] (or uint8)."""
    return get_stamp_detector().detect(images, threshold)
