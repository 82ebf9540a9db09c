"""PNG encoding of generated pixels with numpy and zlib only (the runner and the server need no Pillow)."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels in [-1, 1] -> uint8 [0, 255] (the rounding `seedjax.train.metrics.make_grid` uses)."""
    return np.clip(np.round((np.asarray(pixels, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def encode(image: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, C] (C = 1, 3 or 4) -> PNG bytes."""
    if image.ndim == 2:
        image = image[..., None]
    h, w, c = image.shape
    color_type = {1: 0, 3: 2, 4: 6}[c]  # grayscale, RGB, RGBA

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * c)], axis=1)  # filter 0 per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def decode(data: bytes) -> np.ndarray:
    """The inverse of `encode` (8-bit, unfiltered rows, as written here) -> uint8 [H, W, C]; for tests and clients."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, color_type = header[:4]
    c = {0: 1, 2: 3, 6: 4}[color_type]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    if depth != 8 or np.any(rows[:, 0]):
        raise ValueError("decode reads only 8-bit PNGs with unfiltered rows (what `encode` writes)")
    return rows[:, 1:].reshape(h, w, c)


def grid(images: np.ndarray, cols: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> one [rows * H, cols * W, C] image (missing cells black)."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    out = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, image in enumerate(images):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = image
    return out
