"""Evaluate every stage of a pipeline run on the same held-out prompts and seeds.

    python -m seedjax.eval.report --workdir=runs/distill --pipeline=experiments/quickstart/distill_pipeline.py \
        [--stages=teacher,cfg,...] [--num_prompts=300] [--diversity_prompts=20] [--samples_per_prompt=8] \
        [--teacher_steps=50] [--steps=cfg=6,...] [--grid_prompts=10] [--seed=0] [--batch=100] [--out=DIR]

For each stage (a workdir under --workdir, in pipeline order; tool steps are skipped) at its
own sampling settings (`--teacher_steps` sets the pretrained teacher's Euler steps; `--steps`
overrides any stage's, e.g. the CFG-distilled model at 6 steps as the baseline TSCD must beat;
a stage name may be given as name@label to evaluate one run twice, e.g. `--stages=cfg,cfg@6`):

- NFE per image, counting a true-CFG step as two evaluations;
- Frechet distance between the digit classifier's features of the samples and of the real
  held-out images of the same prompts;
- prompt accuracy (the classifier's reading, or the scene checks for `digit_scenes`);
- diversity: mean pairwise classifier-feature distance among `--samples_per_prompt` samples of
  the same prompt (different seeds), over `--diversity_prompts` prompts;
- wall time per image (compiled sampler, batches after the first, this machine).

Every stage sees the same prompts and the same noise (same seeds, same shapes). Writes
report.md (the table), report.json and grid.png (one row per stage, same prompts and seeds) to
--out (default WORKDIR/report). Exit codes: 0 written, 2 bad arguments or a missing stage run.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from PIL import Image, ImageDraw

import data_pipelines
from seedjax import cli, inference
from seedjax.eval import metrics
from seedjax.eval.judges.classifier import get_classifier
from seedjax.eval.samples import eval_data, generate_all, score_images, still_images
from seedjax.pipeline import load_pipeline
from seedjax.train.metrics import make_grid

COLUMNS = (("nfe", "NFE", "{:d}"), ("frechet_distance", "FD", "{:.2f}"), ("prompt_accuracy", "prompt acc", "{:.3f}"),
           ("diversity", "diversity", "{:.3f}"), ("ms_per_image", "ms / image", "{:.1f}"))


def pipeline_stages(spec: str) -> list[str]:
    """Names of the training stages of a pipeline file (entries that run `seedjax.main`)."""
    return [s["name"] for s in load_pipeline(spec) if "config" in s]


def held_out(data_cfg, num: int, seed: int) -> dict:
    return data_pipelines.make_eval_batch(data_cfg, num=num, seed=seed)


def repeat_prompts(batch: dict, num_prompts: int, copies: int) -> tuple[dict, np.ndarray]:
    """The first `num_prompts` prompts, each `copies` times in a row, and their prompt ids."""
    keys = [k for k in ("tokens", "text_mask", "target_size") if k in batch]
    out = {k: np.repeat(np.asarray(batch[k][:num_prompts]), copies, axis=0) for k in keys}
    return out, np.repeat(np.arange(num_prompts), copies)


def evaluate_stage(run, batch: dict, args) -> tuple[dict, np.ndarray]:
    """The metrics of one stage and its first `--grid_prompts` images."""
    generate, params = run.generate_fn()
    generate = jax.jit(generate)  # once: both generate_all calls below reuse the compiled sampler
    rng = jax.random.key(args.seed)
    prompts = {k: v for k, v in batch.items() if k in ("tokens", "text_mask", "target_size")}
    chunk = min(args.batch, len(batch["tokens"]))
    images, seconds = generate_all(generate, params, prompts, rng, chunk)
    images = still_images(images)
    results = score_images(images, batch, images.shape[1])
    repeated, ids = repeat_prompts(batch, args.diversity_prompts, args.samples_per_prompt)
    many, _ = generate_all(generate, params, repeated, jax.random.fold_in(rng, 1), chunk)  # same compiled shape
    many = still_images(many)
    results["diversity"] = metrics.diversity(get_classifier(images.shape[1]).features(many), ids)
    results["nfe"] = run.nfe
    results["ms_per_image"] = seconds * 1e3
    return results, images[: args.grid_prompts]


def markdown_table(rows: dict[str, dict]) -> str:
    head = "| stage | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, r in rows.items():
        cells = [fmt.format(r[key]) if key in r and r[key] == r[key] else "n/a" for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_image(rows: dict[str, np.ndarray]):
    """One row per stage (its name on the left), images [N, H, W, C] in [-1, 1]."""
    strips = {name: make_grid(images, cols=len(images)) for name, images in rows.items()}
    label_w = 8 + 7 * max(len(n) for n in strips)
    width = label_w + max(s.shape[1] for s in strips.values())
    height = sum(s.shape[0] for s in strips.values())
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw, y = ImageDraw.Draw(canvas), 0
    for name, strip in strips.items():
        canvas.paste(Image.fromarray(strip), (label_w, y))
        draw.text((4, y + strip.shape[0] // 2 - 5), name, fill=(255, 255, 255))
        y += strip.shape[0]
    return canvas


@cli.entry("seedjax.eval.report")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.eval.report", __doc__)
    parser.add_argument("--workdir", required=True, help="the pipeline's root workdir")
    parser.add_argument("--pipeline", default="", help="pipeline file (stage order); or give --stages")
    parser.add_argument("--stages", default="", help="comma-separated stage names (subdirectories of --workdir)")
    parser.add_argument("--num_prompts", type=int, default=300)
    parser.add_argument("--diversity_prompts", type=int, default=20)
    parser.add_argument("--samples_per_prompt", type=int, default=8)
    parser.add_argument("--teacher_steps", type=int, default=50, help="Euler steps of a pretrained (CFG) teacher")
    parser.add_argument("--steps", default="", help="per-stage sampling steps, e.g. cfg@6=6,tscd=3")
    parser.add_argument("--grid_prompts", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse(argv)
    try:
        names = args.stages.split(",") if args.stages else pipeline_stages(args.pipeline) if args.pipeline else []
        if not names:
            raise ValueError("give --pipeline or --stages")
        if min(args.num_prompts, args.diversity_prompts, args.batch) < 1 or args.samples_per_prompt < 2:
            raise ValueError("--num_prompts, --diversity_prompts, --batch must be >= 1 and --samples_per_prompt >= 2")
        steps = dict(item.split("=") for item in args.steps.split(",") if item)
        runs = {name: inference.load(os.path.join(args.workdir, name.split("@")[0])) for name in names}
        for name, n in steps.items():
            if name not in runs:
                raise ValueError(f"--steps names {name!r}, which is not among the stages {names}")
            runs[name] = runs[name].with_sampling(steps=int(n))
    except Exception as e:  # a bad pipeline file, a missing or unfinished stage run
        print(f"report: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    data_cfg = eval_data(runs[names[0]].config)
    batch = held_out(data_cfg, args.num_prompts, args.seed)
    results, grids = {}, {}
    for name, run in runs.items():
        if "distill" not in run.config and name not in steps:
            run = run.with_sampling(steps=args.teacher_steps)
        t0 = time.perf_counter()
        results[name], grids[name] = evaluate_stage(run, batch, args)
        print(f"report: {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in results[name].items())
              + f" ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    out = args.out or os.path.join(args.workdir, "report")
    os.makedirs(out, exist_ok=True)
    table = markdown_table(results)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(f"{len(batch['tokens'])} held-out prompts of `{data_cfg.source}` (seed {args.seed}); diversity over "
                f"{args.diversity_prompts} prompts x {args.samples_per_prompt} seeds; {jax.devices()[0].device_kind}\n\n")
        f.write(table + "\n")
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"args": vars(args), "stages": results}, f, indent=2)
    grid_image(grids).save(os.path.join(out, "grid.png"))
    print(table)
    print(f"report: wrote {out}/report.md, report.json, grid.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
