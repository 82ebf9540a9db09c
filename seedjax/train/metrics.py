"""Where numbers go: metrics.jsonl, TensorBoard, the console line, sample grids.

Only process 0 writes; other processes get a writer that does nothing. The workdir may be
an object-store URL (see workdir.py): metrics.jsonl is then rewritten whole at each log
step (object stores cannot append), and TensorBoard events are written to a local staging
directory and copied to workdir/tb/ at most every `sync_s` seconds and at the end.
"""

from __future__ import annotations

import io
import json
import math
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from seedjax.train import workdir as workdir_lib


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch. tensorboardX tries `import torch`
    only to accept torch tensors, which seedjax never logs; where torch is installed (diffusers
    interop, the tests) that import cost 2 s of every training process's start."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, enabled: bool | None = None, sync_s: float = 30.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.total_steps = total_steps
        self.root = workdir_lib.as_path(workdir)
        self.remote = bool(workdir_lib.scheme(workdir))
        self.sync_s, self._synced_at = sync_s, time.monotonic()
        self._tb = None
        self._jsonl = None
        if self.enabled:
            self.root.mkdir(parents=True, exist_ok=True)
            metrics = self.root / "metrics.jsonl"
            if self.remote:  # kept in memory, written whole
                self._lines = metrics.read_text().splitlines(keepends=True) if metrics.exists() else []
            else:
                self._jsonl = open(metrics, "a", buffering=1)
            SummaryWriter = summary_writer_class()
            self._tb_dir = tempfile.mkdtemp(prefix="seedjax_tb_") if self.remote else str(self.root / "tb")
            self._tb = SummaryWriter(self._tb_dir, flush_secs=10)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        line = json.dumps(row) + "\n"
        if self.remote:
            self._lines.append(line)
            workdir_lib.write_text(self.root / "metrics.jsonl", "".join(self._lines))
        else:
            self._jsonl.write(line)
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        if self.remote and time.monotonic() - self._synced_at > self.sync_s:
            self._sync_tb()

    def _sync_tb(self) -> None:
        """Copy the staged TensorBoard event files to workdir/tb/ (remote workdirs)."""
        self._tb.flush()
        target = self.root / "tb"
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(pathlib.Path(self._tb_dir).iterdir()):
            (target / path.name).write_bytes(path.read_bytes())
        self._synced_at = time.monotonic()

    def progress(self, step: int, scalars: dict[str, float], eta_s: float | None) -> None:
        if not self.enabled:
            return
        keys = ("loss", "lr", "grad_norm", "steps_per_sec", "mfu")
        parts = [f"{k}={_fmt(scalars[k])}" for k in keys if k in scalars]
        eta = f" eta {_duration(eta_s)}" if eta_s is not None else ""
        print(f"[step {step}/{self.total_steps}] " + " ".join(parts) + eta, file=sys.stderr, flush=True)

    def images(self, step: int, images: np.ndarray, name: str = "samples", cols: int | None = None) -> str | None:
        """Save a grid of samples [N, F, H, W, C] (or images [N, H, W, C], `cols` a row) in [-1, 1] to
        workdir/samples/step_<N>.png; a video's frames run along its row (also TensorBoard's
        image), and videos are also written as an animated grid, samples/step_<N>.gif."""
        if not self.enabled:
            return None
        grid = make_grid(images, cols)
        path = self.root / "samples" / f"step_{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(grid).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
        self._tb.add_image(name, grid, step, dataformats="HWC")
        if np.ndim(images) == 5 and np.shape(images)[1] > 1:
            gif = path.with_suffix(".gif")
            gif.write_bytes(animated_gif([make_grid(images[:, f]) for f in range(np.shape(images)[1])]))
            return str(gif)
        return str(path)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.remote:
            self._sync_tb()
            self._tb.close()
            shutil.rmtree(self._tb_dir, ignore_errors=True)
        else:
            self._jsonl.close()
            self._tb.close()


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, H, W, C] floats in [-1, 1] -> one uint8 RGB grid. Samples with a frame axis
    [N, F, H, W, C]: still images (F = 1) as images; videos one row of F frames each."""
    images = np.asarray(images, np.float32)
    if images.ndim == 5:
        n, f = images.shape[:2]
        return make_grid(images.reshape(n * f, *images.shape[2:]), cols=None if f == 1 else f, pad=pad)
    if images.ndim != 4:
        raise ValueError(f"make_grid expects [N, H, W, C] or [N, F, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=-1)
    images = np.clip((images + 1.0) * 127.5, 0, 255).astype(np.uint8)
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = images[i]
    return grid


def animated_gif(frames: list[np.ndarray], fps: float = 8.0) -> bytes:
    """uint8 RGB frames [H, W, 3] -> the bytes of a looping GIF."""
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


class Throughput:
    """Steps/sec and examples/sec between log steps, and the ETA."""

    def __init__(self, start_step: int, total_steps: int):
        self.total, self.start = total_steps, start_step
        self._last_step, self._last_time = start_step, time.perf_counter()

    def update(self, step: int, batch_size: int) -> tuple[float, float, float]:
        now = time.perf_counter()
        dt = max(now - self._last_time, 1e-9)
        sps = (step - self._last_step) / dt
        self._last_step, self._last_time = step, now
        eta = (self.total - step) / sps if sps > 0 else float("nan")
        return sps, sps * batch_size, eta


def _plain(v):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
