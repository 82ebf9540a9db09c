"""Export any stage's trained generator for serving: params-only bundle, diffusers folders, StableHLO.

    python -m seedjax.export --workdir=runs/quickstart/pretrain --out=exports/qs \\
        [--formats=bundle,stablehlo,diffusers] [--step=N] [--quantize=int8] [--sizes=16x16,32x32 | 9x16x16] \\
        [--batch=8] [--ema=true] [--platforms=cpu,cuda,tpu] [--max_shots=S]

Writes into --out (which must not exist yet, or be empty):
  manifest.json         source run and checkpoint step, which weights (EMA by default), the config,
                        NFE and sampler settings, sizes, formats, quantization, sha256 of every file
  params.safetensors    the generator's parameters (text encoder + DiT), float or int8 (--quantize)
  config.json           format `bundle`: `seedjax.inference.load(OUT)` restores the generator onto any mesh
  vae/                  format `bundle` of a latent run: the frozen VAE (config.json, params.safetensors,
                        factors.json), so the bundle needs neither the VAE run nor the latent shards
  stablehlo/generate_HxW.jaxexport   format `stablehlo`: prompt tokens -> image, every sampler step with
                        its guidance and a latent run's decoder, batch size symbolic (a video model:
                        generate_FxHxW, per-shot captions and an optional first frame -> clip); run it with
                        `python -m seedjax.serving.run_exported --model=OUT` (jax and numpy only)
  diffusers/transformer (FluxTransformer2DModel), diffusers/vae (AutoencoderKL, latent runs),
  diffusers/text_encoder (seedjax weights: diffusers has no byte-level text encoder); format
                        `diffusers`, checked against diffusers on random inputs (needs torch + diffusers)

--batch is the largest batch the server forms (recorded in the manifest); --sizes default to the
run's own size (a video model's: its frames x height x width); --max_shots is the most shots a
video prompt may have (default: the run's data.video.max_shots). Exit codes: 0 written; 2 bad
arguments, a workdir without a generator, or a model a format cannot express (one line on
stderr, nothing written).
"""

from __future__ import annotations

import json
import os
import sys
import time

from flax import nnx

from data_pipelines.core import tokenizer
from seedjax import cli, inference
from seedjax.inference import exported, weights_file
from seedjax.inference.bundle import BundleError
from seedjax.serving import diffusers_export, stablehlo
from seedjax.serving.run_exported import sha256
from seedjax.train.params import save_exported_vae

FORMATS = ("bundle", "stablehlo", "diffusers")


class ExportArgsError(cli.UsageError):
    pass


def parse_sizes(text: str) -> list[tuple[int, ...]]:
    """'16x16,32x32' (images) or '9x16x16' (videos: frames x height x width)."""
    sizes = []
    for item in filter(None, text.split(",")):
        parts = item.lower().split("x")
        if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ExportArgsError(f"--sizes: {item!r} is not HxW (images, e.g. 16x16) or FxHxW (videos, e.g. 9x16x16)")
        sizes.append(tuple(int(p) for p in parts))
    return sizes


def check_args(args) -> tuple[list[str], list[tuple[int, ...]]]:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if not formats or unknown:
        raise ExportArgsError(f"--formats: unknown {unknown or formats} (choose from {', '.join(FORMATS)})")
    if args.quantize not in ("", "none", "int8"):
        raise ExportArgsError(f"--quantize: {args.quantize!r} (int8 or none)")
    if args.batch < 1:
        raise ExportArgsError(f"--batch must be >= 1, got {args.batch}")
    if args.max_shots < 0:
        raise ExportArgsError(f"--max_shots must be >= 1 (or 0: the run's data.video.max_shots), got {args.max_shots}")
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise ExportArgsError(f"--out {args.out}: exists and is not an empty directory")
    return formats, parse_sizes(args.sizes)


@cli.entry("seedjax.export")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.export", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--formats", default="bundle,stablehlo")
    parser.add_argument("--step", type=int, default=-1, help="checkpoint step (default: the latest)")
    parser.add_argument("--quantize", default="")
    parser.add_argument("--sizes", default="")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max_shots", type=int, default=0, help="video: shots per prompt (default: the run's)")
    parser.add_argument("--ema", type=cli.parse_bool, default=True)
    parser.add_argument("--platforms", default="cpu,cuda,tpu")
    args = parser.parse(argv)
    formats, sizes = check_args(args)
    t0 = time.perf_counter()
    path = args.workdir if args.step < 0 else os.path.join(args.workdir, "checkpoints", str(args.step))
    try:
        bundle = inference.load(path, use_ema=args.ema)
        sizes = sizes or [default_size(bundle)]
        if "stablehlo" in formats:
            for size in sizes:
                stablehlo.geometry_at(bundle, size)  # raises on a size the model cannot make
        if "diffusers" in formats:
            diffusers_export.check(bundle)
    except (BundleError, ValueError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2

    os.makedirs(args.out, exist_ok=True)
    flat = weights_file.flatten(inference_params(bundle))
    float_bytes = {name: v.nbytes for name, v in flat.items()}
    if args.quantize == "int8":
        flat = weights_file.quantize_int8(flat)
    files = {exported.PARAMS: flat}
    weights_file.save(os.path.join(args.out, exported.PARAMS), flat, {"quantize": args.quantize or "none"})
    with open(os.path.join(args.out, exported.CONFIG), "w") as f:
        f.write(bundle.config.to_json(indent=1))
    if "bundle" in formats and bundle.codec is not None:
        save_exported_vae(bundle.config, os.path.join(args.out, exported.VAE))
    programs = {}
    if "stablehlo" in formats:
        os.makedirs(os.path.join(args.out, "stablehlo"), exist_ok=True)
        platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
        for size in sizes:
            blob, signature = stablehlo.export(bundle, flat, size, platforms, args.max_shots)
            key = "x".join(map(str, size))
            name = f"stablehlo/generate_{key}.jaxexport"
            with open(os.path.join(args.out, name), "wb") as f:
                f.write(blob)
            programs[key] = {"file": name, **signature}
    notes = []
    if "diffusers" in formats:
        notes += diffusers_export.write(bundle, os.path.join(args.out, "diffusers"))
    manifest = make_manifest(bundle, args, formats, sizes, programs, flat, float_bytes, notes)
    manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
    with open(os.path.join(args.out, exported.MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    size_mb = sum(entry["bytes"] for entry in manifest["files"].values()) / 2**20
    print(f"export: {bundle.config.stage} at {bundle.nfe} NFE ({bundle.entry} weights of {bundle.step_path}) -> "
          f"{args.out}: {', '.join(formats)}, sizes {', '.join('x'.join(map(str, s)) for s in sizes)}, {size_mb:.2f} MiB, "
          f"{manifest['export_seconds']:.1f} s")
    return 0


def default_size(bundle) -> tuple[int, ...]:
    """The run's own size: HxW, or FxHxW for a video model (its data.video.num_frames)."""
    frame = (int(bundle.config.data.image_size),) * 2
    return (int(bundle.config.data.video.num_frames), *frame) if bundle.model.is_video else frame


def inference_params(bundle) -> dict:
    return nnx.to_pure_dict(nnx.state(bundle.model))


def make_manifest(bundle, args, formats, sizes, programs, flat, float_bytes, notes) -> dict:
    step = os.path.basename(bundle.step_path)
    files = {}
    for root, _, names in os.walk(args.out):
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, args.out)
            files[rel] = {"bytes": os.path.getsize(full), "sha256": sha256(full)}
    dit_float = sum(n for k, n in float_bytes.items() if k.startswith("dit/"))
    dit_stored = sum(v.nbytes for k, v in flat.items() if k.startswith("dit/"))
    sampler = bundle.sampler
    return {
        "format_version": 1,
        "source": {"workdir": os.path.abspath(bundle.workdir), "checkpoint": bundle.step_path,
                   "step": int(step) if step.isdigit() else None, "entry": bundle.entry},
        "stage": bundle.config.stage,
        "nfe": bundle.nfe,
        "sampler": {"num_steps": sampler.num_steps, "sigmas": list(sampler.sigmas), "cfg_scale": sampler.cfg_scale,
                    "embedded_guidance": sampler.guidance, "guidance_kind": stablehlo.guidance_kind(bundle),
                    "default_guidance": stablehlo.default_guidance(bundle)},
        "sizes": [list(s) for s in sizes],
        "kind": "video" if bundle.model.is_video else "image",
        "formats": formats,
        "max_batch": args.batch,
        "quantization": {"method": "int8 weight-only, symmetric, per output channel" if args.quantize == "int8"
                         else "none", "float_bytes": sum(float_bytes.values()), "stored_bytes": sum(v.nbytes for v in flat.values()),
                         "dit_float_bytes": dit_float, "dit_stored_bytes": dit_stored},
        "tokenizer": {"kind": "utf8-bytes", "max_len": int(bundle.config.data.max_text_len), "pad": tokenizer.PAD,
                      "bos": tokenizer.BOS, "eos": tokenizer.EOS, "offset": tokenizer.NUM_SPECIAL},
        "stablehlo": programs,
        "notes": notes,
        "config": bundle.config.to_dict(),
        "files": files,
    }


if __name__ == "__main__":
    sys.exit(main())
