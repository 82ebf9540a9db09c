"""Real handwritten digit glyphs from scikit-learn, with the one train/test split.

Every user of the bundled digits (the `digits` and `digit_scenes` sources, the digit
classifier, held-out evaluation) takes its images from here so that the split is the
same everywhere: sample i is held out when i % 6 == 0 (300 of 1,797).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELD_OUT_EVERY = 6


@functools.lru_cache(maxsize=None)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    # scikit-learn ships the UCI digits as a CSV of 64 pixel counts (0-16) and the label a row.
    # Reading that file directly skips `import sklearn.datasets` (1-2 s of scipy.stats and more
    # in every process that touches the digits: training, evaluation, each data worker).
    csv = os.path.join(os.path.dirname(importlib.util.find_spec("sklearn").origin), "datasets", "data", "digits.csv.gz")
    if os.path.exists(csv):
        table = np.loadtxt(csv, delimiter=",")
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:  # another scikit-learn layout: its loader reads the same table
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, target = bunch.images, bunch.target
    return (pixels / 16.0).astype(np.float32), target.astype(np.int32)  # [1797, 8, 8] in [0, 1]


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, 8, 8] in [0, 1], labels int32 [N]) for 'train', 'test' or 'all'."""
    images, labels = _all_digits()
    idx = np.arange(len(labels))
    if split == "train":
        keep = idx % HELD_OUT_EVERY != 0
    elif split == "test":
        keep = idx % HELD_OUT_EVERY == 0
    elif split == "all":
        keep = np.ones_like(idx, bool)
    else:
        raise ValueError(f"unknown digits split {split!r}; use 'train', 'test' or 'all'")
    return images[keep], labels[keep]


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [N, h, w] glyphs in [0, 1] to [N, size, size] (PIL, per image)."""
    from PIL import Image

    out = np.empty((len(images), size, size), np.float32)
    for i, img in enumerate(images):
        pil = Image.fromarray(img.astype(np.float32), mode="F")
        out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR), np.float32)
    return np.clip(out, 0.0, 1.0)
