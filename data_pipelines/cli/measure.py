"""Measure what the data techniques do to a trained model (runs of experiments/seedream/*.py).

    python -m data_pipelines.cli.measure defects --off=runs/defects_off --on=runs/defects_on [--num=512]
    python -m data_pipelines.cli.measure dual_axis --off=runs/dual_off --on=runs/dual_on [--num=512] [--grid=out.png]

defects: both models draw images for the same held-out (clean) prompts; the stamp detector
(seedjax.eval.judges.stamps) counts how many come out stamped, per kind. Also printed: the same rates
on real training scenes, the detector's own error rates on them, and how much data the
defect-aware run kept and dropped (its metrics).
dual_axis: both models draw images for held-out prompts with *uniform* digits and colors; the
scene scorer checks digit, color and count; accuracy is reported on the tail (the 5 rarest
digits, the 3 rarest colors of the long-tailed training data) and the head. `--grid` also writes
the first samples of each tail digit, without | with the technique, one row per digit.
The table is printed and appended to BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys

import jax
import numpy as np

import data_pipelines
from data_pipelines.sources.scenes import DEFECT_KINDS
from seedjax import cli
from seedjax.config import workdir_config
from seedjax.eval.judges import scenes, stamps
from seedjax.tools.calibrate_paro import load_model, sample

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
TAIL_DIGITS, TAIL_COLORS = (5, 6, 7, 8, 9), (3, 4, 5)


def generate(workdir: str, prompts: dict, seed: int, chunk: int = 64) -> np.ndarray:
    """Images [N, H, W, C] in [-1, 1] from a pretrain-style workdir (EMA weights if the run samples with them)."""
    model, config = load_model(workdir)
    keys = ("tokens", "text_mask", "target_size")
    run = jax.jit(lambda p, rng: sample(model, config, p, rng))
    n = len(prompts["tokens"])
    out = []
    for i, start in enumerate(range(0, n, chunk)):
        part = {k: prompts[k][start : start + chunk] for k in keys if k in prompts}
        size = len(part["tokens"])
        part = {k: np.concatenate([v, np.repeat(v[-1:], chunk - size, 0)]) for k, v in part.items()}
        out.append(np.asarray(run(part, jax.random.fold_in(jax.random.key(seed), i)))[:size])
    return np.concatenate(out)


def _config(workdir: str):
    return workdir_config(workdir)


def _last_counters(workdir: str) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return next((r for r in reversed(rows) if "data/samples" in r), {})


def measure_defects(off: str, on: str, num: int, seed: int) -> list[str]:
    config = _config(on)
    size = config.data.image_size
    detector = stamps.get_stamp_detector(size)
    prompts = data_pipelines.make_eval_batch(config.data, num=num, seed=seed)
    found = {name: detector.detect(generate(w, prompts, seed)) for name, w in (("off", off), ("on", on))}
    # The detector on real training-distribution scenes (a seed training did not use).
    real, labels = stamps.labelled_scenes(num, "train", seed + 7, config.data.scenes.defect_fraction, size)
    on_real = detector.detect(real)
    stamped = labels.any(1)
    counters = _last_counters(on)
    kept, dropped = counters.get("data/samples", 0), counters.get("data/skipped_defect_area", 0)
    kinds = ("any",) + DEFECT_KINDS
    rows = [f"| {label} | " + " | ".join(f"{flags[k].mean():.1%}" for k in kinds) + " |"
            for label, flags in ((f"trained without defect-aware masking (`{off}`)", found["off"]),
                                 (f"trained with defect-aware masking (`{on}`)", found["on"]),
                                 ("real training scenes (reference)", on_real))]
    return [
        f"Fraction of {num} generated images the stamp detector ({size}x{size}) flags, for held-out clean prompts:",
        "", "| images | any stamp | " + " | ".join(DEFECT_KINDS) + " |", "|---|" + "---:|" * len(kinds), *rows, "",
        f"Training data: {config.data.scenes.defect_fraction:.0%} of scenes stamped. The defect-aware run kept "
        f"{kept} samples and dropped {dropped} ({dropped / max(kept + dropped, 1):.1%}) whose stamps cover more "
        f"than {config.data.defects.max_area:.0%} of the image; the stamps of the kept ones were masked out of the "
        f"loss. The detector on {num} real scenes: recall {on_real['any'][stamped].mean():.1%}, false positives "
        f"{on_real['any'][~stamped].mean():.1%}.",
    ]


def save_grid(path: str, off: np.ndarray, on: np.ndarray, digit: np.ndarray, per_row: int = 6, zoom: int = 3) -> None:
    """One row per tail digit: its first `per_row` prompts drawn by the `off` run | by the `on` run."""
    from PIL import Image

    h, w, c = off.shape[1:]
    gap = max(2, w // 4)
    grid = np.zeros((len(TAIL_DIGITS) * (h + 2), 2 * per_row * (w + 2) + gap, 3), np.uint8)
    for row, d in enumerate(TAIL_DIGITS):
        for col, i in enumerate(np.flatnonzero(digit == d)[:per_row]):
            for side, images in enumerate((off, on)):
                tile = np.clip(np.rint((images[i] + 1.0) * 127.5), 0, 255).astype(np.uint8)
                y, x = row * (h + 2) + 1, side * (per_row * (w + 2) + gap) + col * (w + 2) + 1
                grid[y : y + h, x : x + w] = tile if c == 3 else tile[..., :1]
    Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(path)


def measure_dual_axis(off: str, on: str, num: int, seed: int, grid: str | None = None) -> list[str]:
    config = _config(on)
    uniform = config.data.copy_and_resolve_references()
    uniform.scenes.long_tail = 0.0
    prompts = data_pipelines.make_eval_batch(uniform, num=num, seed=seed)
    digit, color = prompts["scene_digit"][:, 0], prompts["scene_color"][:, 0]
    groups = {"tail digits (5-9)": np.isin(digit, TAIL_DIGITS), "head digits (0-4)": ~np.isin(digit, TAIL_DIGITS),
              "tail colors (cyan, blue, purple)": np.isin(color, TAIL_COLORS),
              "head colors (red, yellow, green)": ~np.isin(color, TAIL_COLORS)}
    checks = {"digit": "digit (with its color) right", "color": "color right", "overall": "every check right"}

    def score(images):
        return scenes.score_scenes(images, prompts["scene_digit"], prompts["scene_color"], prompts["scene_box"],
                                   prompts["scene_count"])

    results, images = {}, {}
    for name, workdir in (("off", off), ("on", on)):
        images[name] = generate(workdir, prompts, seed)
        scores = score(images[name])
        results[name] = {(g, c): float(np.mean(scores[c][m])) for g, m in groups.items() for c in checks}
    if grid:
        save_grid(grid, images["off"], images["on"], digit)
    real = score(prompts["image"])  # the held-out scenes behind the prompts: what the scorer can read
    lines = [f"Prompt accuracy on {num} held-out prompts with uniform digits and colors; training data long-tailed "
             f"(Zipf {config.data.scenes.long_tail}). Each cell: uniform sampling -> dual-axis sampling.", "",
             "| prompts | " + " | ".join(checks.values()) + " |", "|---|" + "---:|" * len(checks)]
    lines += [f"| {g} ({int(m.sum())}) | " + " | ".join(f"{results['off'][g, c]:.1%} -> {results['on'][g, c]:.1%}"
                                                       for c in checks) + " |" for g, m in groups.items()]
    lines += ["", "The real held-out scenes of these prompts, scored the same way: "
              + ", ".join(f"{label} {np.mean(real[c]):.1%}" for c, label in checks.items()) + "."]
    return lines


@cli.entry("data_pipelines.cli.measure")
def main(argv: list[str]) -> int:
    parser = cli.Parser("data_pipelines.cli.measure", __doc__)
    parser.add_argument("study", choices=("defects", "dual_axis"))
    parser.add_argument("--off", required=True, help="workdir of the run without the technique")
    parser.add_argument("--on", required=True, help="workdir of the run with the technique")
    parser.add_argument("--num", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default="", help="dual_axis: also write tail-digit samples (off | on) to this PNG")
    parser.add_argument("--no-append", dest="append", action="store_false",
                        help="print only; do not append to BENCHMARKS.md")
    args = parser.parse(argv)
    for workdir in (args.off, args.on):
        if _config(workdir) is None:
            print(f"measure: {workdir}: not a seedjax workdir (no config.json)", file=sys.stderr)
            return 2
    if args.study == "defects":
        lines = measure_defects(args.off, args.on, args.num, args.seed)
    else:
        lines = measure_dual_axis(args.off, args.on, args.num, args.seed, grid=args.grid or None)
    steps = _last_counters(args.on).get("step", "?")
    title = "Defect-aware training" if args.study == "defects" else "Dual-axis collaborative sampling"
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    text = "\n".join(["", f"## {title} (data_pipelines/cli/measure.py)", "",
                      f"`python -m data_pipelines.cli.measure {args.study} --off={args.off} --on={args.on} --num={args.num}` "
                      f"on {machine}; runs of experiments/seedream/{'defect_aware' if args.study == 'defects' else 'dual_axis'}"
                      f".py, {steps} steps.", "", *lines])
    print(text)
    if args.append:
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
