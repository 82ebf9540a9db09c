"""Evaluation models: cold training cost, scoring throughput and the quality numbers they stand on.

    python -m benchmarks.eval [--num=1000] [--repeats=3] [--max_load=1.0] [--no-append]

Trains the digit classifier and the stamp detector from scratch in a temporary `$SEEDJAX_CACHE`
(wall time and process CPU time: on a shared machine the CPU time is the honest cost), then times
the batched scoring paths (median of `--repeats` runs after a warm-up): classifier features for
FD, stamp detection, scene scoring. Quality columns: held-out digit accuracy, stamp detector
precision/recall on held-out scenes, scene scores on generator scenes (train and test glyphs).
A table is printed and appended to BENCHMARKS.md (unless --no-append, or unless the 1-minute
load average at the start was above --max_load).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks import protocol


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def median_rate(fn, n: int, repeats: int) -> float:
    fn()  # compile
    times = [timed(fn)[1] for _ in range(repeats)]
    return n / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-append", action="store_true")
    protocol.add_max_load(parser)
    args = parser.parse_args()
    load_before = protocol.begin(args.max_load, args.no_append)
    os.environ["SEEDJAX_CACHE"] = tempfile.mkdtemp(prefix="seedjax_bench_eval_")
    from seedjax.models import small_cnn

    small_cnn.SHIPPED = small_cnn.cache_dir() / "none_shipped"  # train them: that is the cost measured

    from data_pipelines.sources.scenes import SceneConfig, make_scene
    from seedjax.eval.judges.classifier import get_classifier
    from seedjax.eval.judges.scenes import score_scenes
    from seedjax.eval.judges.stamps import get_stamp_detector, labelled_scenes
    from seedjax.train.digit_encoder import digit_images

    classifier, clf_wall, clf_cpu = timed(get_classifier)
    detector, det_wall, det_cpu = timed(get_stamp_detector)

    digits, _ = digit_images("all", 32)
    digits = np.resize(digits, (args.num,) + digits.shape[1:])
    scenes, _ = labelled_scenes(args.num, "test", 7, 0.5)
    feats_rate = median_rate(lambda: classifier.features(digits), args.num, args.repeats)
    stamp_rate = median_rate(lambda: detector.detect(scenes), args.num, args.repeats)

    scene_scores = {}
    for split in ("train", "test"):
        batch = [make_scene(i, SceneConfig(split=split), 11) for i in range(300)]
        labels = [np.stack([s[k] for s in batch]) for k in ("scene_digit", "scene_color", "scene_box", "scene_count")]
        images = np.stack([s["image"] for s in batch])
        scene_scores[split] = score_scenes(images, *labels, classifier=classifier)
        if split == "test":
            score_rate = median_rate(lambda: score_scenes(images, *labels, classifier=classifier), 300, args.repeats)

    meta = detector.metadata
    lines = [
        f"## Evaluation models (benchmarks/eval.py), {datetime.date.today()}", "",
        f"Command: `python -m benchmarks.eval --num={args.num} --repeats={args.repeats}`", "",
        f"Machine: {protocol.machine_header(load_before)} (wall and process CPU times). Throughputs are medians "
        "of the repeats after a compile run.", "",
        "| what | cold training wall (s) | training CPU (s) | scoring throughput | quality |",
        "|---|---:|---:|---:|---|",
        f"| digit classifier (32x32) | {clf_wall:.1f} | {clf_cpu:.1f} | {feats_rate:,.0f} images/s (features) | "
        f"held-out digits accuracy {float(classifier.metadata['test_accuracy']):.4f}, distorted "
        f"{float(classifier.metadata['distorted_test_accuracy']):.4f} |",
        f"| stamp detector (64x64) | {det_wall:.1f} | {det_cpu:.1f} | {stamp_rate:,.0f} images/s | "
        f"held-out any: precision {float(meta['any_precision']):.3f}, recall {float(meta['any_recall']):.3f}; "
        + ", ".join(f"{k} {float(meta[k + '_precision']):.3f}/{float(meta[k + '_recall']):.3f}"
                    for k in ("watermark", "mosaic", "subtitle")) + " |",
        f"| scene scoring (64x64, 1-3 digits) | - | - | {score_rate:,.0f} scenes/s | "
        + "; ".join(f"{split}-glyph scenes overall {r['overall_accuracy']:.3f} (digit {r['digit_accuracy']:.3f}, "
                    f"count {r['count_accuracy']:.3f}, color {r['color_accuracy']:.3f}, "
                    f"position {r['position_accuracy']:.3f})" for split, r in scene_scores.items()) + " |",
        "",
    ]
    print("\n".join(lines))
    protocol.append("\n" + "\n".join(lines), load_before, args.max_load, args.no_append)


if __name__ == "__main__":
    main()
