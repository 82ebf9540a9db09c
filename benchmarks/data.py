"""Data pipeline throughput per source with 0, 1 and 2 prefetch workers, next to what training eats.

    python -m benchmarks.data [--batches=40] [--sources=digits,digit_scenes,folder,shards] [--max_load=1.0]
        [--no-append]

For each source, the training iterator of the quickstart batch size (64) is built and warmed
up (worker start-up excluded), then `--batches` batches are timed in windows of 5; the median
window gives samples per second. The quickstart consumption rate is measured by running the
quickstart training itself (`python -m seedjax.main`, experiments/quickstart/pretrain.py) for
a short while and reading `examples_per_sec` from its metrics, on the same machine. The folder
source is a generated set of photos-like PNG/JPEG images of mixed sizes (3 buckets); the
shards source is the same set written with `python -m data_pipelines.cli.prepare`.
A table is printed and appended to BENCHMARKS.md (unless --no-append, or unless the 1-minute
load average at the start was above --max_load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
WINDOW = 5


def make_folder(root: str, n: int = 400) -> None:
    """Smooth random color fields with a few shapes, 64-160 px, three aspect ratios, half JPEG."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    shapes = [(96, 96), (64, 128), (160, 96)]
    for i in range(n):
        h, w = shapes[i % 3]
        base = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
            draw.ellipse([x0, y0, x0 + rng.integers(8, 40), y0 + rng.integers(8, 40)], fill=tuple(rng.integers(0, 255, 3)))
        ext = "jpg" if i % 2 else "png"
        img.save(os.path.join(root, f"{i:04d}.{ext}"))
        with open(os.path.join(root, f"{i:04d}.txt"), "w") as f:
            f.write(f"a picture with three shapes, number {i}")


def data_config(source: str, path: str, workers: int):
    import data_pipelines

    cfg = data_pipelines.default_config()
    cfg.source, cfg.path, cfg.num_workers = source, path, workers
    cfg.image_size, cfg.max_text_len = 32, 32
    if source in ("folder", "shards"):
        cfg.buckets = "32x32,24x48,48x32"
    return cfg


def samples_per_sec(cfg, batches: int) -> float:
    import data_pipelines

    it = data_pipelines.make_train_iterator(cfg, global_batch_size=BATCH, seed=0, process_index=0, process_count=1)
    for _ in range(3):  # worker start-up and first fills are not throughput
        next(it)
    rates = []
    for _ in range(max(1, batches // WINDOW)):
        start = time.perf_counter()
        for _ in range(WINDOW):
            next(it)
        rates.append(WINDOW * BATCH / (time.perf_counter() - start))
    it.close()
    return statistics.median(rates)


def quickstart_consumption(steps: int) -> float:
    """examples/s of the quickstart training step (median over its log steps, compile excluded)."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "seedjax.main", "--config=experiments/quickstart/pretrain.py", f"--workdir={workdir}",
               f"--config.total_steps={steps}", "--config.log_every=10", f"--config.checkpoint_every={steps}",
               f"--config.sample_every={10 * steps}", "--config.eval_every=0"]
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"quickstart run failed: {proc.stderr.strip().splitlines()[-1:]}")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    rates = [r["examples_per_sec"] for r in rows if r.get("examples_per_sec")]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--sources", default="digits,digit_scenes,folder,shards")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--quickstart_steps", type=int, default=60)
    parser.add_argument("--no-append", dest="append", action="store_false")
    protocol.add_max_load(parser)
    args = parser.parse_args(argv)
    load_before = protocol.begin(args.max_load, not args.append)
    from data_pipelines.cli import prepare

    consumption = quickstart_consumption(args.quickstart_steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = os.path.join(tmp, "folder"), os.path.join(tmp, "shards")
        os.makedirs(folder)
        make_folder(folder)
        prepare.main(["--source=folder", f"--path={folder}", f"--out={shards}", "--num_shards=4"])
        paths = {"folder": folder, "shards": shards}
        for source in args.sources.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                rate = samples_per_sec(data_config(source, paths.get(source, ""), workers), args.batches)
                rows.append((source, workers, rate))
                print(f"{source:14s} workers={workers}  {rate:9.0f} samples/s  {rate / consumption:6.1f}x quickstart",
                      flush=True)

    python = f"{platform.python_implementation()} {platform.python_version()}"
    lines = [
        "", "## Data pipeline throughput (benchmarks/data.py)", "",
        f"`python -m benchmarks.data --batches={args.batches}` on {python}; batch {BATCH}, 32x32, "
        f"median of {WINDOW}-batch windows after warm-up. Quickstart training consumes "
        f"{consumption:.0f} examples/s on this machine (median of its log steps, "
        f"`experiments/quickstart/pretrain.py`).", "",
        f"Machine: {protocol.machine_header(load_before)}.", "",
        "| source | workers | samples/s | x quickstart consumption |", "|---|---:|---:|---:|",
    ]
    lines += [f"| {s} | {w} | {r:.0f} | {r / consumption:.1f} |" for s, w, r in rows]
    print("\n".join(lines))
    protocol.append("\n".join(lines) + "\n", load_before, args.max_load, not args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
