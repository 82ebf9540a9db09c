"""Data pipeline throughput per source and worker count, interleaved with what training eats.

    python -m benchmarks.data [--rounds=3] [--batches=20] [--sources=digits,digit_scenes,folder,shards]
        [--workers=0,1,2] [--read_threads=1] [--per_core=folder256,latents256] [--max_load=1.0] [--no-append]

The arms run in rounds (A B C ... A B C ...), so a machine that gets busier or quieter during the
run moves every arm alike; the table gives each arm's median over the rounds and its range:
- `training`: a short run of the quickstart (`python -m seedjax.main`, experiments/quickstart/
  pretrain.py, `--training` to change it); its examples/s is the median of its logged steps after
  the first (compilation excluded). That is what training eats on this machine.
- one arm per source x prefetch workers x read threads: a fresh training iterator of batch 64 at
  32x32; its start-up and the batches its workers buffered meanwhile are not timed (3 batches, plus
  2 x workers x data.worker_buffer_size), then `--batches` batches are. Each turn starts and closes
  its own iterator, so no worker process keeps producing into another arm's turn.
- per-core rows (`--per_core`): one thread does everything (no workers, no read threads, no
  read-ahead), at the size an accelerator trains on: `folder256` decodes and crops photos-like
  JPEG/PNG files (256-480 px) to 256x256 buckets; `latents256` reads shards of the latents of
  256x256 images (32x32x16, a factor-8 VAE with 16 channels, as Flux's) with their captions. The
  samples/s of one core sizes the data hosts: an accelerator that trains on N samples/s needs about
  N / rate cores for its input.
The machine line records the load average before and after and the thread settings; a run that
started on a busy machine (load above --max_load) prints its table and does not append it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import protocol
from seedjax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
PER_CORE = {"folder256": "folder", "latents256": "shards"}


# --------------------------------------------------------------------------- bundled test data


def make_folder(root: str, n: int = 400, sizes=((96, 96), (64, 128), (160, 96))) -> None:
    """Smooth random color fields with a few shapes, `sizes` (h, w) in turn, half of them JPEG."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        base = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
            extent = rng.integers(8, max(9, min(h, w) // 2))
            draw.ellipse([x0, y0, x0 + extent, y0 + extent], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        ext = "jpg" if i % 2 else "png"
        img.save(os.path.join(root, f"{i:04d}.{ext}"))
        with open(os.path.join(root, f"{i:04d}.txt"), "w") as f:
            f.write(f"a picture with three shapes, number {i}")


class RandomLatents:
    """A factor-8, 16-channel VAE (Flux's shape) in `prepare.write_latents`, with random latents in
    place of its encodings: reading cost does not depend on their values, and encoding 256x256
    images with a real VAE of that size would take minutes on a CPU."""

    downsample_factor, latent_channels, scaling_factor, shift_factor = 8, 16, 1.0, 0.0

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def encode(self, images: np.ndarray) -> np.ndarray:
        n, h, w, _ = images.shape
        f = self.downsample_factor
        return self.rng.standard_normal((n, h // f, w // f, self.latent_channels)).astype(np.float32)


def write_latent_shards(folder: str, out: str, size: int) -> None:
    """Latent shards of `folder` at `size`, as `python -m data_pipelines.cli.prepare --vae=...` writes them."""
    from data_pipelines.cli import prepare
    from data_pipelines.core import pipeline

    cfg = data_config("folder", folder, 0, size)
    source = pipeline.open_source("folder", folder, cfg, split="train", seed=0)
    prepare.write_latents(source, out, RandomLatents(), cfg, num_shards=4)


# --------------------------------------------------------------------------- arms


def data_config(source: str, path: str, workers: int, size: int = 32, read_threads: int | None = None):
    import data_pipelines

    cfg = data_pipelines.default_config()
    cfg.source, cfg.path, cfg.num_workers = source, path, workers
    cfg.image_size, cfg.max_text_len = size, 32
    if read_threads is not None:
        cfg.read_threads = read_threads
    if source in ("folder", "shards"):
        cfg.buckets = f"{size}x{size},{size * 3 // 4}x{size * 3 // 2},{size * 3 // 2}x{size}"
    return cfg


def warmup_batches(cfg) -> int:
    """Untimed batches of a turn: start-up, then what the workers can have buffered meanwhile."""
    return 3 + 2 * cfg.num_workers * cfg.worker_buffer_size


def samples_per_sec(cfg, batches: int) -> float:
    """One turn: a fresh iterator, warmed up untimed, then `batches` batches timed; closed after."""
    import data_pipelines

    it = data_pipelines.make_train_iterator(cfg, global_batch_size=BATCH, seed=0, process_index=0, process_count=1)
    try:
        for _ in range(warmup_batches(cfg)):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * BATCH / (time.perf_counter() - start)
    finally:
        it.close()


def one_core(cfg):
    """Everything on the calling thread: no workers, no read threads, no read-ahead."""
    cfg.num_workers, cfg.read_threads, cfg.read_buffer = 0, 1, 0
    return cfg


def training_consumption(config: str, steps: int) -> float:
    """examples/s of a short training run (median over its logged steps after the first)."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "seedjax.main", f"--config={config}", f"--workdir={workdir}",
               f"--config.total_steps={steps}", "--config.log_every=10", f"--config.checkpoint_every={steps}",
               f"--config.sample_every={10 * steps}", "--config.eval_every=0"]
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the training run failed: {proc.stderr.strip().splitlines()[-1:]}")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    rates = [r["examples_per_sec"] for r in rows if r.get("examples_per_sec")]
    if not rates:
        raise RuntimeError(f"the training run logged no examples_per_sec in {steps} steps; use more steps")
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def run_rounds(arms: dict, rounds: int) -> dict[str, list[float]]:
    """Each arm (a callable giving a rate) once per round, in the given order, `rounds` times."""
    rates = {name: [] for name in arms}
    for r in range(rounds):
        for name, arm in arms.items():
            rates[name].append(arm())
            print(f"round {r + 1}/{rounds}  {name:32s} {rates[name][-1]:9.0f}/s", flush=True)
    return rates


# --------------------------------------------------------------------------- main


def parse(argv: list[str]):
    parser = cli.Parser("benchmarks.data", __doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per turn")
    parser.add_argument("--sources", default="digits,digit_scenes,folder,shards")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--read_threads", default="", help="comma-separated; default: data.read_threads's default")
    parser.add_argument("--per_core", default="folder256,latents256", help="'' for none")
    parser.add_argument("--training", default="experiments/quickstart/pretrain.py")
    parser.add_argument("--training_steps", type=int, default=40)
    parser.add_argument("--no-append", dest="append", action="store_false")
    protocol.add_max_load(parser)
    args = parser.parse(argv)
    from data_pipelines.core import config as config_lib

    args.workers = cli.int_list("workers", args.workers, 0)
    args.read_threads = cli.int_list("read_threads", args.read_threads or str(config_lib.default_config().read_threads), 1)
    args.sources = [s for s in args.sources.split(",") if s]
    args.per_core = [s for s in args.per_core.split(",") if s]
    bad = [s for s in args.sources if s not in ("digits", "digit_scenes", "folder", "shards")]
    bad += [s for s in args.per_core if s not in PER_CORE]
    if bad:
        raise cli.UsageError(f"unknown source or per-core row {bad[0]!r} (see --help)")
    if args.rounds < 1 or args.batches < 1 or args.training_steps < 20:
        raise cli.UsageError("--rounds and --batches must be >= 1 and --training_steps >= 20 (two logged steps)")
    return args


@cli.entry("benchmarks.data")
def main(argv: list[str]) -> int:
    args = parse(argv)
    load_before = protocol.begin(args.max_load, not args.append)
    from data_pipelines.cli import prepare

    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: os.path.join(tmp, name) for name in ("folder", "shards", "folder256", "latents256")}
        if {"folder", "shards"} & set(args.sources):
            os.makedirs(paths["folder"])
            make_folder(paths["folder"])
            prepare.main(["--source=folder", f"--path={paths['folder']}", f"--out={paths['shards']}",
                          "--num_shards=4"])
        if args.per_core:
            os.makedirs(paths["folder256"])
            make_folder(paths["folder256"], 200, sizes=((320, 320), (256, 480), (480, 320)))
            write_latent_shards(paths["folder256"], paths["latents256"], 256)
        arms = {"training": lambda: training_consumption(args.training, args.training_steps)}
        for source in args.sources:
            for workers in args.workers:
                for threads in args.read_threads:
                    cfg = data_config(source, paths.get(source, ""), workers, read_threads=threads)
                    arms[f"{source}|{workers}|{threads}"] = lambda cfg=cfg: samples_per_sec(cfg, args.batches)
        for name in args.per_core:
            cfg = one_core(data_config(PER_CORE[name], paths[name], 0, 256))
            arms[f"{name}|0|one core"] = lambda cfg=cfg: samples_per_sec(cfg, args.batches)
        rates = run_rounds(arms, args.rounds)

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"

    training = rates.pop("training")
    eats = statistics.median(training)
    command = " ".join(["python -m benchmarks.data", *argv])
    lines = [
        "", "## Data pipeline throughput (benchmarks/data.py)", "",
        f"`{command}`: {args.rounds} rounds, every arm once a round; median (min-max) over the rounds. "
        f"Data arms: batch {BATCH}, {args.batches} timed batches a turn after the warm-up, a fresh "
        f"iterator each turn. Training (`{args.training}`, {args.training_steps}-step runs) eats "
        f"{cell(training)} examples/s; the last column divides each median by its median.", "",
        f"Machine: {protocol.machine_header(load_before)}.", "",
        "| source | size | workers | read threads | samples/s | x training |", "|---|---|---:|---:|---:|---:|",
    ]
    for name, values in rates.items():
        source, workers, threads = name.split("|")
        size = "256x256 (one core)" if threads == "one core" else "32x32"
        threads = "1 (no read-ahead)" if threads == "one core" else threads
        lines.append(f"| {source} | {size} | {workers} | {threads} | {cell(values)} | "
                     f"{statistics.median(values) / eats:.1f} |")
    print("\n".join(lines))
    protocol.append("\n".join(lines) + "\n", load_before, args.max_load, not args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
