"""Moving-digit clips: real handwritten digit glyphs sliding and bouncing on a black canvas.

    clips = moving_digit_clips("test", num=16, frames=9, size=64, seed=0)  # [16, 9, 64, 64, 1] in [-1, 1]

Glyphs come from `glyphs.load_digits(split)`, so held-out clips use only held-out digits.
Each clip has 1-2 digits of random size with constant velocities, reflected at the borders;
where digits overlap the brighter pixel wins. Deterministic in (split, num, frames, size, seed).
"""

from __future__ import annotations

import numpy as np

from data_pipelines.sources import glyphs


def moving_digit_clips(split: str, num: int, frames: int, size: int, seed: int = 0,
                       max_digits: int = 2) -> np.ndarray:
    images, _ = glyphs.load_digits(split)
    rng = np.random.default_rng(seed)
    clips = np.zeros((num, frames, size, size), np.float32)
    for n in range(num):
        for _ in range(rng.integers(1, max_digits + 1)):
            glyph_size = int(rng.integers(size // 3, size // 2 + 1))
            glyph = glyphs.upsample(images[rng.integers(len(images))][None], glyph_size)[0]
            span = size - glyph_size
            pos = rng.uniform(0, span, 2)
            vel = rng.uniform(-0.12, 0.12, 2) * size  # up to ~12% of the canvas per frame
            for t in range(frames):
                y, x = (int(round(p)) for p in pos)
                window = clips[n, t, y: y + glyph_size, x: x + glyph_size]
                np.maximum(window, glyph, out=window)
                pos = pos + vel
                for axis in range(2):  # reflect at the borders (|vel| < span, so once is enough)
                    if pos[axis] < 0:
                        pos[axis], vel[axis] = -pos[axis], -vel[axis]
                    elif pos[axis] > span:
                        pos[axis], vel[axis] = 2 * span - pos[axis], -vel[axis]
    return clips[..., None] * 2.0 - 1.0
