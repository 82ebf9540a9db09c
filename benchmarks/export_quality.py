"""Exported generators judged on held-out prompts: float vs int8 weights, artifact sizes, export cost.

    python -m benchmarks.export_quality --model=exports/qs --model=exports/qs_int8 [--num_prompts=300] \
        [--seed=0] [--batch=50] [--max_load=1.0] [--no-append]

Each export directory is run through its StableHLO program (`seedjax.serving.run_exported`,
the path a server takes) on the same held-out prompts of the exporting run's held-out data
(`seedjax.eval.samples.eval_data`: `config.eval.data` when the run trains on ODE pairs or
latents; the run's seed) and the same noise, and judged by the independent digit classifier
(`seedjax.eval.samples.score_images`: prompt accuracy, Frechet distance to the real held-out
images). Reported per export: quantization, parameter file and
DiT weight sizes, StableHLO size, export seconds, prompt accuracy, FD, and the largest pixel
difference from the first export (the float reference when listed first). A table is printed
and appended to BENCHMARKS.md (unless --no-append, or unless the 1-minute load average at the
start was above --max_load).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np

import data_pipelines
from benchmarks import protocol
from data_pipelines.core.tokenizer import detokenize
from seedjax.config import config_from_json
from seedjax.eval.samples import eval_data, score_images
from seedjax.serving.run_exported import ExportedGenerator


def judge(model: ExportedGenerator, config, num_prompts: int, seed: int, batch: int) -> tuple[np.ndarray, dict]:
    data = eval_data(config)  # the held-out data, not the ODE pairs or latents a run may train on
    held_out = data_pipelines.make_eval_batch(data, num=num_prompts, seed=config.seed)
    captions = detokenize(held_out["tokens"])
    size = model.default_size
    noise = model.noise(seed, len(captions), size)
    guidance = np.full(len(captions), model.default_guidance, np.float32)
    images = np.concatenate([model.generate(captions[i:i + batch], noise[i:i + batch], guidance[i:i + batch], size)
                             for i in range(0, len(captions), batch)])
    return images, score_images(images, held_out, int(data.image_size))


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.export_quality", allow_abbrev=False)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--num_prompts", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--no-append", action="store_true")
    protocol.add_max_load(parser)
    args = parser.parse_args()
    load_before = protocol.begin(args.max_load, args.no_append)
    rows, reference = [], None
    for directory in args.model:
        model = ExportedGenerator(directory)
        manifest, files = model.manifest, model.manifest["files"]
        images, scores = judge(model, config_from_json(os.path.join(directory, "config.json")), args.num_prompts,
                               args.seed, args.batch)
        reference = images if reference is None else reference
        q = manifest["quantization"]
        hlo = sum(f["bytes"] for name, f in files.items() if name.startswith("stablehlo/"))
        rows.append(f"| {directory} | {manifest['stage']} {manifest['nfe']} NFE | {q['method'].split(',')[0]} | "
                    f"{files['params.safetensors']['bytes'] / 2**20:.2f} | {q['dit_stored_bytes'] / 2**20:.2f} "
                    f"({q['dit_stored_bytes'] / q['dit_float_bytes']:.2f}x) | {hlo / 2**10:.0f} | "
                    f"{manifest['export_seconds']:.1f} | {scores.get('prompt_accuracy', float('nan')):.3f} | "
                    f"{scores.get('frechet_distance', float('nan')):.2f} | {np.abs(images - reference).max():.4f} |")
        print(rows[-1], flush=True)
    command = "python -m benchmarks.export_quality " + " ".join(sys.argv[1:])
    table = "\n".join([
        f"\n### Exports: size and quality ({datetime.date.today()})\n",
        f"`{command}` ({args.num_prompts} held-out prompts, seed {args.seed}, through the StableHLO programs)\n",
        f"Machine: {protocol.machine_header(load_before)}.\n",
        "| export | model | weights | params MiB | DiT MiB (vs float) | StableHLO KiB | export s | prompt acc. | FD "
        "| max pixel diff vs first |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, ""])
    print(table)
    protocol.append(table, load_before, args.max_load, args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
