"""Full-reference image quality: PSNR and SSIM of images or clips against their originals.

Arrays are float in [-1, 1] (peak-to-peak 2), [N, H, W, C] or clips [N, F, H, W, C]; a clip's
score is the mean over its frames, and every function returns the mean over the N items. SSIM is
scikit-image's (Gaussian-free 7x7 window, data_range 2), per frame over all channels.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity


def _frames(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x.reshape(-1, *x.shape[-3:])


def psnr_per_item(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] PSNR (dB) of each image or clip (clips: the mean of the frames' PSNR)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"psnr: shapes differ, {np.shape(a)} and {np.shape(b)}")
    mse = np.mean(np.square(_frames(a) - _frames(b)), axis=(1, 2, 3))
    per_frame = 10.0 * np.log10(4.0 / np.maximum(mse, 1e-10))
    return per_frame.reshape(np.shape(a)[0], -1).mean(axis=1)


def ssim_per_item(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N] SSIM of each image or clip (clips: the mean over frames)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"ssim: shapes differ, {np.shape(a)} and {np.shape(b)}")
    per_frame = [structural_similarity(x, y, data_range=2.0, channel_axis=-1) for x, y in zip(_frames(a), _frames(b))]
    return np.asarray(per_frame, np.float64).reshape(np.shape(a)[0], -1).mean(axis=1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(psnr_per_item(a, b)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(ssim_per_item(a, b)))
