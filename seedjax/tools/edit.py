"""Edit images with an editing run (data.source=edit_triples or edit_jsonl): one instruction, one or two images.

    python -m seedjax.tools.edit --workdir=runs/edit_pipeline/edit --image=scene.png \\
        --instruction="make the red 3 blue" [--out=edited.png] [--num=4] [--seed=0] [--steps=N] [--guidance=G] \\
        [--reference_guidance=R] [--step=K]
    python -m seedjax.tools.edit --workdir=runs/edit_pipeline/edit --image=a.png --image=b.png \\
        --instruction="the digit of image 1 in the color of image 2, at the top left"

Each --image is read with PIL (EXIF orientation applied, alpha dropped, grayscale made RGB) and
resized to the run's image size (bilinear), the size the model was trained at; the first image
is the one edited, a second one a further reference (as edit_triples' compose edits). The
images are the model's clean references, packed after the target in its sequence
(`seedjax.models.generator.pack_references`). `--num` edits with seeds seed..seed+num-1 are
written side by side after the inputs in one PNG row. `--steps` / `--guidance` override the run's
sampler (steps, CFG scale over the instruction: its unconditional branch keeps the images);
`--reference_guidance` its guidance on the images (sampling.reference_scale; a run trained with
diffusion.reference_dropout).

Exit codes: 0 written; 2 bad arguments, a run that was not trained to edit, more images than it
takes, or an image that does not open (one line on stderr, nothing written).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from PIL import Image, ImageOps

from data_pipelines.core.config import EDIT_SOURCES
from data_pipelines.core.mixtures import components
from data_pipelines.sources.edit_triples import MAX_SOURCES
from seedjax import cli, inference
from seedjax.inference.bundle import BundleError
from seedjax.train.metrics import make_grid


def read_image(path: str, height: int, width: int) -> np.ndarray:
    """An image file as RGB float32 [height, width, 3] in [-1, 1] (ValueError if it does not open)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB").resize((width, height), Image.BILINEAR)
    except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"--image {path}: not a readable image ({e})") from None
    return np.asarray(image, np.float32) / 127.5 - 1.0


def edit_batch(bundle, images: list[np.ndarray], instruction: str, num: int) -> dict:
    """The prompt batch of `num` edits: the instruction, the images in reference slots (zeros past them)."""
    _, height, width, channels = bundle.pixel_shape
    source = np.zeros((num, MAX_SOURCES, height, width, channels), np.float32)
    source[:, : len(images)] = np.stack(images)
    return bundle.prompts([instruction] * num) | {"source": source,
                                                  "num_sources": np.full((num,), len(images), np.int32)}


def open_run(path: str, steps: int, guidance: float, reference_guidance: float):
    bundle = inference.load(path).with_sampling(steps, guidance, reference_guidance=reference_guidance)
    sources = {kind for kind, _, _ in components(bundle.config.data).values()}
    if not sources & set(EDIT_SOURCES) or bundle.model.is_video:
        raise BundleError(f"{path}: not an editing run (its data is {', '.join(sorted(sources))}; an editing run "
                          f"trains on data.source={' or '.join(EDIT_SOURCES)}, e.g. experiments/seedream/edit.py)")
    if bundle.pixel_shape[-1] != 3:
        raise BundleError(f"{path}: this run's images have {bundle.pixel_shape[-1]} channels; edits are RGB")
    return bundle


@cli.entry("seedjax.tools.edit")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.tools.edit", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--image", action="append", required=True, help="repeat for a second reference image")
    parser.add_argument("--instruction", required=True)
    parser.add_argument("--out", default="edited.png")
    parser.add_argument("--num", type=int, default=1, help="edits, one per seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=0.0)
    parser.add_argument("--reference_guidance", type=float, default=0.0)
    parser.add_argument("--step", type=int, default=-1, help="checkpoint step (default: the latest)")
    args = parser.parse(argv)
    try:
        if args.num < 1:
            raise ValueError(f"--num must be >= 1, got {args.num}")
        if len(args.image) > MAX_SOURCES:
            raise ValueError(f"{len(args.image)} images: an editing run takes 1 to {MAX_SOURCES}")
        if not args.instruction.strip():
            raise ValueError("--instruction is empty")
        if os.path.isdir(args.out):
            raise ValueError(f"--out {args.out} is a folder; name the PNG to write")
        path = args.workdir if args.step < 0 else os.path.join(args.workdir, "checkpoints", str(args.step))
        bundle = open_run(path, args.steps, args.guidance, args.reference_guidance)
        _, height, width, _ = bundle.pixel_shape
        images = [read_image(p, height, width) for p in args.image]
    except (BundleError, ValueError) as e:
        print(f"edit: {e}", file=sys.stderr)
        return 2
    batch = edit_batch(bundle, images, args.instruction, args.num)
    generate, params = bundle.generate_fn()
    jitted = jax.jit(generate)
    keys = [jax.random.key(args.seed + i) for i in range(args.num)]
    one = lambda i: {k: v[i:i + 1] for k, v in batch.items()}
    jax.block_until_ready(jitted(params, one(0), keys[0]))  # compile
    t0 = time.perf_counter()
    edits = np.concatenate([np.asarray(jitted(params, one(i), keys[i]))[:, 0] for i in range(args.num)])
    seconds = (time.perf_counter() - t0) / args.num
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    row = np.concatenate([np.stack(images), edits])
    Image.fromarray(make_grid(row, cols=len(row))).save(args.out)
    print(f"edit: {len(images)} image(s) + {args.num} edit(s) at {bundle.nfe} NFE, {seconds * 1e3:.1f} ms/edit; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
