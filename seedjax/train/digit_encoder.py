"""The digit CNN: a small network trained once on the real digits, then frozen.

Two users, one network definition and one training recipe:
- the digit classifier that judges generated digits (`seedjax.eval.judges.classifier`):
  prompt accuracy and the features of the Frechet distance;
- REPA's frozen encoder (`seedjax.train.repa`): the convolutional trunk of the same network,
  trained with another seed so that the judge stays independent of what the DiT was pulled toward.

A `SmallCNN` (`seedjax.models.small_cnn`) trained on the real digits 'train' split (the one split
of `data_pipelines.sources.glyphs`), with augmentation that imitates what generators get wrong
(shift, scale, rotation, stroke thickness, blur, contrast, noise). Training is seeded and
deterministic, takes well under a minute on two CPU cores, and is cached as safetensors under
`$SEEDJAX_CACHE` keyed by the settings and `CODE_VERSION` (bump it whenever a change here alters
the weights).

Images in: [N, H, W, C] float in [-1, 1] (or uint8), C = 1 or 3, any H, W. RGB is reduced to a
glyph intensity map (max over channels: a digit of any palette color on a dark background becomes
a bright glyph), resized to the working resolution and contrast-normalised per image.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines.sources import glyphs
from seedjax.models import augment, small_cnn

CODE_VERSION = "3"
CACHE_NAME = "digit_classifier"  # the cache directory (and key) of the trained weights


@dataclasses.dataclass(frozen=True)
class DigitCNNSettings:
    image_size: int = 32
    steps: int = 1000
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    # The glyphs are 8x8 at heart: a stride-2 first layer loses nothing and quarters the cost.
    channels: tuple[int, ...] = (16, 32, 64)
    first_stride: int = 2
    feature_dim: int = 64


@dataclasses.dataclass(frozen=True)
class DigitCNN:
    """A trained digit network: the module, the settings it was trained with, and the metadata
    stored with its weights (held-out accuracies, code version)."""

    model: small_cnn.SmallCNN
    settings: DigitCNNSettings
    metadata: dict


def to_intensity(images, image_size: int) -> jax.Array:
    """[N, H, W, C] in [-1, 1] (or uint8) -> contrast-normalised glyph intensity [N, S, S, 1] in [0, 1]."""
    x = jnp.asarray(images)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else (x.astype(jnp.float32) + 1.0) / 2.0
    x = jnp.max(x, axis=-1, keepdims=True)
    if x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, 1), "linear", antialias=True)
    return normalize_contrast(x)


def normalize_contrast(x: jax.Array) -> jax.Array:
    """Map each image's background level to 0 and its ink level to 1.

    Background = darkest 4x4 block mean, ink = brightest 2x2 block mean: robust to pixel noise and
    far cheaper than percentiles (a sort) on CPU. The floor on the range keeps a blank or
    pure-noise image from being stretched into strokes.
    """
    n, s = x.shape[0], x.shape[1]
    lo = x.reshape(n, s // 4, 4, s // 4, 4).mean((2, 4)).min((1, 2))
    hi = x.reshape(n, s // 2, 2, s // 2, 2).mean((2, 4)).max((1, 2))
    lo, hi = lo[:, None, None, None], hi[:, None, None, None]
    return jnp.clip((x - lo) / jnp.maximum(hi - lo, 0.2), 0.0, 1.0)


def check_images(images) -> None:
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(f"digit classifier: images must be [N, H, W, C] with C = 1 or 3, got shape {shape}")


def batched_apply_fn(model: small_cnn.SmallCNN, image_size: int) -> Callable[[np.ndarray, str], np.ndarray]:
    """`apply(images, method)` -> numpy: the network's 'logits' or 'features' of images [N, H, W, C],
    jitted once (parameters an argument), in fixed-size chunks."""
    graphdef, state = nnx.split(model)

    def run(state, images, method):
        module = nnx.merge(graphdef, state)
        x = to_intensity(images, image_size)
        return module(x) if method == "logits" else module.features(x)

    jitted = jax.jit(run, static_argnums=2)

    def apply(images, method: str) -> np.ndarray:
        check_images(images)
        return small_cnn.batched_apply(lambda x: jitted(state, x, method), np.asarray(images))

    return apply


def digit_images(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The real digits of `split` upsampled to image_size: (float [N, S, S, 1] in [-1, 1], labels)."""
    images, labels = glyphs.load_digits(split)
    return glyphs.upsample(images, image_size)[..., None] * 2.0 - 1.0, labels


def augment_digits(images01: jax.Array, key: jax.Array) -> jax.Array:
    """The training distortions: [N, S, S, 1] in [0, 1] -> same."""
    # Wide aspect jitter: a glyph cropped from a scene (or drawn by a generator) is often
    # narrower or wider than the frame-filling real digits.
    affine = functools.partial(augment.random_affine, max_aspect=0.3)
    blur = functools.partial(augment.random_blur, max_sigma=1.0)
    stages = (affine, augment.random_stroke, blur, augment.random_photometric)
    k_stages, k_noise = jax.random.split(key)
    return augment.add_noise(augment.pipeline(stages, images01, k_stages), k_noise, max_sigma=0.08)


def _train(model: small_cnn.SmallCNN, settings: DigitCNNSettings, log_every: int = 0) -> dict:
    train_x, train_y = digit_images("train", settings.image_size)

    def make_batch(data, key):
        images01, labels = data
        k_idx, k_aug = jax.random.split(key)
        idx = jax.random.randint(k_idx, (settings.batch_size,), 0, images01.shape[0])
        return normalize_contrast(augment_digits(images01[idx], k_aug)), labels[idx]

    def loss_fn(logits, labels):
        targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.05)
        return optax.softmax_cross_entropy(logits, targets).mean()

    small_cnn.fit(model, ((train_x + 1.0) / 2.0, train_y), make_batch, loss_fn, steps=settings.steps,
                  lr=settings.lr, seed=settings.seed, log_every=log_every)
    apply = batched_apply_fn(model, settings.image_size)
    predict = lambda images: apply(images, "logits").argmax(-1)
    test_x, test_y = digit_images("test", settings.image_size)
    test_accuracy = float((predict(test_x) == test_y).mean())
    # The same held-out digits pushed through the training distortions (one fixed draw).
    distorted = augment_digits(jnp.asarray((test_x + 1.0) / 2.0), jax.random.key(12345)) * 2.0 - 1.0
    distorted_accuracy = float((predict(np.asarray(distorted)) == test_y).mean())
    return {"test_accuracy": test_accuracy, "distorted_test_accuracy": distorted_accuracy,
            "code_version": CODE_VERSION}


def load(image_size: int = 32, **overrides) -> DigitCNN:
    """The digit CNN at working resolution `image_size` (`overrides`: other DigitCNNSettings fields),
    trained on first use and loaded from the cache after. Not memoised: callers keep what they load."""
    settings = DigitCNNSettings(image_size=image_size, **overrides)
    make = lambda: small_cnn.SmallCNN(1, settings.image_size, 10, channels=settings.channels,
                                      feature_dim=settings.feature_dim, first_stride=settings.first_stride,
                                      rngs=nnx.Rngs(settings.seed))
    key = {"model": CACHE_NAME, "code_version": CODE_VERSION, **dataclasses.asdict(settings)}
    model, metadata = small_cnn.load_or_train(CACHE_NAME, key, make, lambda m: _train(m, settings))
    return DigitCNN(model, settings, metadata)
