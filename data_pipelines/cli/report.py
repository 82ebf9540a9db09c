"""Dual-axis sampling report: cluster sizes and the distribution before and after balancing.

    python -m data_pipelines.cli.report --source=digit_scenes --data.scenes.long_tail=1.5 \
        --data.dual_axis.alpha=1.0 --png=dual_axis.png [--weights_out=weights.npy]

Prints the visual (coarse, fine) and text cluster sizes, the joint (visual, text) clusters'
effective number and head/tail shares with uniform sampling ("before") and with the dual-axis
weights ("after"), and, for labelled sources, the share of each digit and color. Writes the
same as bar charts to `--png`, and the weights to `--weights_out` for `data.dual_axis.weights_file`.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from data_pipelines.core import config as config_lib
from data_pipelines.core import pipeline
from data_pipelines.sources.scenes import COLOR_NAMES
from data_pipelines.techniques import dual_axis
from seedjax import cli
from seedjax.config import apply_overrides
from seedjax.eval.judges.classifier import digit_features


def shares(ids: np.ndarray, weights: np.ndarray, num: int) -> np.ndarray:
    """Share of each id in 0..num-1 under per-row weights; ids may be [N] or [N, K] with -1 padding."""
    ids = ids.reshape(len(weights), -1)
    w = np.broadcast_to(weights[:, None], ids.shape)
    keep = ids >= 0
    totals = np.bincount(ids[keep], weights=w[keep], minlength=num)[:num]
    return totals / max(totals.sum(), 1e-12)


def effective_number(p: np.ndarray) -> float:
    """exp(entropy): the number of equally likely clusters with the same entropy."""
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def summarize(analysis: dual_axis.Analysis) -> dict:
    v = analysis.valid
    uniform = v.astype(np.float64)
    joint = analysis.visual * (analysis.text.max() + 1) + analysis.text
    _, joint_ids = np.unique(joint[v], return_inverse=True)
    n_joint = int(joint_ids.max()) + 1
    before = shares(joint_ids, uniform[v], n_joint)
    after = shares(joint_ids, analysis.weights[v], n_joint)
    order = np.argsort(-before)
    head = order[: max(1, n_joint // 10)]
    out = {
        "samples": len(v), "valid": int(v.sum()),
        "coarse_sizes": np.bincount(analysis.coarse[v]).tolist(),
        "fine_sizes": np.bincount(analysis.visual[v]).tolist(),
        "text_sizes": np.bincount(analysis.text[v]).tolist(),
        "joint_clusters": n_joint,
        "joint_before": before[order], "joint_after": after[order],
        "effective_before": effective_number(before), "effective_after": effective_number(after),
        "head_share_before": float(before[head].sum()), "head_share_after": float(after[head].sum()),
        "labels": {},
    }
    names = {"label": [str(d) for d in range(10)], "scene_digit": [str(d) for d in range(10)]}
    if "scene_color" in analysis.labels:
        names["scene_color"] = list(COLOR_NAMES)
    for key, ids in analysis.labels.items():
        out["labels"][key] = (names[key], shares(ids, uniform, len(names[key])),
                              shares(ids, analysis.weights, len(names[key])))
    return out


def print_summary(s: dict, name: str, alpha: float) -> None:
    print(f"source {name}: {s['samples']} samples, {s['valid']} valid; alpha = {alpha}")
    print(f"visual coarse clusters ({len(s['coarse_sizes'])}): {s['coarse_sizes']}")
    fine = [n for n in s["fine_sizes"] if n > 0]
    print(f"visual fine clusters ({len(fine)}): min {min(fine)}, median {int(np.median(fine))}, max {max(fine)}")
    print(f"text clusters ({len(s['text_sizes'])}): {sorted(s['text_sizes'], reverse=True)}")
    print(f"joint (visual, text) clusters: {s['joint_clusters']}")
    print(f"{'':34s}{'before':>10s}{'after':>10s}")
    print(f"{'effective number of clusters':34s}{s['effective_before']:10.1f}{s['effective_after']:10.1f}")
    print(f"{'share of the largest 10%':34s}{s['head_share_before']:10.3f}{s['head_share_after']:10.3f}")
    print(f"{'largest cluster share':34s}{s['joint_before'][0]:10.4f}{s['joint_after'][0]:10.4f}")
    print(f"{'smallest cluster share':34s}{s['joint_before'][-1]:10.4f}{s['joint_after'][-1]:10.4f}")
    for key, (names, before, after) in s["labels"].items():
        print(f"{key} share:")
        for n, b, a in zip(names, before, after):
            print(f"  {n:32s}{b:10.3f}{a:10.3f}")


def _bars(draw, box, title: str, before: np.ndarray, after: np.ndarray, names=None) -> None:
    """Grouped bars (before gray, after blue) in the pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    draw.text((x0, y0), title, fill=(0, 0, 0))
    top, bottom = y0 + 16, y1 - (14 if names else 4)
    draw.line([(x0, bottom), (x1, bottom)], fill=(0, 0, 0))
    peak = max(before.max(), after.max(), 1e-12)
    slot = (x1 - x0) / len(before)
    for i, (b, a) in enumerate(zip(before, after)):
        left = x0 + i * slot
        for j, (value, color) in enumerate(((b, (150, 150, 150)), (a, (40, 90, 220)))):
            bx0 = left + slot * (0.1 + 0.4 * j)
            bx1 = bx0 + max(slot * 0.4 - 1, 1)
            draw.rectangle([bx0, bottom - (bottom - top) * value / peak, bx1, bottom], fill=color)
        if names:
            draw.text((left + 2, bottom + 2), names[i][:6], fill=(0, 0, 0))


def write_png(s: dict, path: str, name: str) -> None:
    from PIL import Image, ImageDraw

    # Joint clusters are many: show them in 20 groups by rank, largest first.
    groups = np.array_split(np.arange(len(s["joint_before"])), min(20, len(s["joint_before"])))
    grouped = [np.array([p[g].sum() for g in groups]) for p in (s["joint_before"], s["joint_after"])]
    panels = [("joint clusters in 20 groups by size, largest first (gray: before, blue: after)", *grouped, None)]
    panels += [(f"{key} share", b, a, names) for key, (names, b, a) in s["labels"].items()]
    width, height = 900, 200 * len(panels) + 30
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), f"dual-axis sampling: {name}", fill=(0, 0, 0))
    for k, (title, before, after, names) in enumerate(panels):
        _bars(draw, (20, 30 + 200 * k, width - 20, 30 + 200 * (k + 1) - 10), title, before, after, names)
    img.save(path)


@cli.entry("data_pipelines.cli.report")
def main(argv: list[str]) -> int:
    parser = cli.Parser("data_pipelines.cli.report", __doc__, overrides="data")
    parser.add_argument("--source", default="digits", choices=config_lib.SOURCES)
    parser.add_argument("--path", default="")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", default="dual_axis.png")
    parser.add_argument("--weights_out", default="", help="write the weights (.npy) for data.dual_axis.weights_file")
    args = parser.parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    data_cfg = config_lib.default_config()
    apply_overrides(data_cfg, args.overrides, prefix="data")  # a bad key or value: exit 2 (cli.entry)
    try:
        source = pipeline.open_source(args.source, args.path, data_cfg, split=args.split, seed=args.seed)
        analysis = dual_axis.analyse(source, data_cfg, args.seed, classifier_features=digit_features)
    except ValueError as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    summary = summarize(analysis)
    print_summary(summary, source.name, data_cfg.dual_axis.alpha)
    write_png(summary, args.png, source.name)
    print(f"wrote {args.png}")
    if args.weights_out:
        np.save(args.weights_out, analysis.weights)
        print(f"wrote {args.weights_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
