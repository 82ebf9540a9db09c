"""Text-to-image pretraining in pixel space on your own captioned images (a folder or a JSONL manifest).

    python -m seedjax.main --config=experiments/custom/folder_pretrain.py:path=/data/images --workdir=runs/mine
    python -m seedjax.main --config=experiments/custom/folder_pretrain.py:path=/data/train.jsonl,size=128 \
        --workdir=runs/mine128
    python -m seedjax.main --config=experiments/custom/folder_pretrain.py:tiny --workdir=/tmp/mine_tiny \
        --config.data.path=/data/images

Data (`data_pipelines/sources/folders.py`): a folder holds images (png, jpg, webp, ...) with a
same-name `.txt` caption next to each (`cat.jpg` + `cat.txt`), found recursively; images
without a caption and files that are not readable images are skipped and counted
(`data/scan_skipped_<kind>` in metrics.jsonl). A JSONL manifest lists
`{"path": "a/cat.jpg", "caption": "a cat"}` lines, paths relative to the manifest. Images of
any size are resized to cover `size` x `size` and centre-cropped; RGB.

Args (`:key=value,...`): `path` (folder or .jsonl; also `--config.data.path=`), `source`
(`folder` | `jsonl`; '' = from `path`: a `.jsonl` file is a manifest), `size` (pixels; -1 =
the variant's: 64, tiny 32, base 256), `steps` (-1 = the variant's), `variant`:

* `default`: the CPU-sized MMDiT of the quickstart (2 + 2 blocks, width 128) on 8x8 patches
  (64 tokens at 64x64); it predicts the clean image (`model.prediction='x0'`), which
  pixel-space models with wide patches learn far faster than a velocity.
* `tiny`: seconds on a CPU (CI); evaluates once at its last step.
* `base`: for a GPU/TPU cluster (launch/slurm.sbatch, tpu_vm.sh, gke_jobset.yaml): the MMDiT
  `base` preset (12 + 24 blocks, width 1024) in bfloat16 with rematerialisation, 16x16 patches
  (256 tokens at 256x256), parameters sharded over every device (`mesh.fsdp=-1`), global batch 256.

Evaluation on these images reports no digit-classifier numbers (prompt accuracy and the
classifier's Frechet distance mean nothing here): its evaluator is `image_folder` (Frechet
distance of pooled pixels, channel statistics and diversity against the held-out real images,
seconds per image; off by default: `--config.eval_every=N` turns it on). Sample grids of held-out
captions are written every `sample_every` steps.
"""

from experiments.common import link_widths, make_tiny, small_text_to_image
from seedjax.config import parse_arg
from seedjax.schema.evals import evals_config, generator_eval

VARIANTS = ("default", "tiny", "base")
DEFAULT_SIZE = {"default": 64, "tiny": 32, "base": 256}


def source_for(path: str, source: str) -> str:
    """The data source for `path`: `source` when given, else a `.jsonl` file is a manifest."""
    if source:
        if source not in ("folder", "jsonl"):
            raise ValueError(f"source must be folder or jsonl, got {source!r}")
        return source
    return "jsonl" if path.endswith(".jsonl") else "folder"


def folder_data(cfg, path: str, source: str, size: int) -> None:
    """Point `cfg.data` at an image folder or manifest, RGB at `size` x `size`."""
    cfg.data.source = source_for(path, source)
    cfg.data.path = path
    cfg.data.image_size = size
    cfg.data.channels = 3
    cfg.data.max_text_len = 64


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", path="", source="", size=-1, steps=-1)
    if arg.variant not in VARIANTS:
        raise ValueError(f"unknown variant {arg.variant!r} ({' | '.join(VARIANTS)})")
    size = arg.size if arg.size > 0 else DEFAULT_SIZE[arg.variant]
    cfg = small_text_to_image(num_heads=4)
    folder_data(cfg, arg.path, arg.source, size)
    cfg.evals = evals_config(generator=generator_eval(cfg.data.source))  # image_folder: no digit judge
    cfg.input.patch_size = 8
    cfg.model.prediction = "x0"
    cfg.total_steps = 4000
    cfg.checkpoint_every = 1000
    cfg.sample_every = 1000
    cfg.eval_every = 0  # image_folder statistics on 16 prompts are coarse; sample grids show progress
    cfg.num_samples = 16
    cfg.eval.num_prompts = 16
    cfg.eval.batch_size = 16

    if arg.variant == "tiny":
        make_tiny(cfg)
        cfg.update(total_steps=10, checkpoint_every=10, sample_every=10)
        cfg.eval_every = cfg.total_steps  # exercises evaluation on non-digit data
        cfg.eval.num_prompts = 4
        cfg.eval.batch_size = 4
    elif arg.variant == "base":
        _base(cfg, size)
    if size % cfg.input.patch_size:
        raise ValueError(f"size {size} is not a multiple of the patch size {cfg.input.patch_size}")
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    link_widths(cfg)
    return cfg


def _base(cfg, size: int) -> None:
    """The cluster-sized model and schedule (see the module doc)."""
    # The MMDiT `base` preset's sizes (seedjax/schema/models.py), with RoPE axes for head_dim 64.
    cfg.model.update(num_heads=16, head_dim=64, depth_double=12, depth_single=24, axes_dims_rope=(16, 24, 24),
                     dtype="bfloat16", remat=True)
    cfg.text.update(width=1024, depth=8, num_heads=16, dtype="bfloat16")
    cfg.input.patch_size = 16 if size >= 128 else 8
    cfg.batch_size = 256
    cfg.total_steps = 200_000
    cfg.optimizer.update(lr=1e-4, warmup_steps=2000, schedule="cosine", end_lr_factor=0.1, weight_decay=0.01)
    cfg.ema_decay = 0.9999
    cfg.log_every = 100
    cfg.checkpoint_every = 2000
    cfg.sample_every = 5000
    cfg.num_samples = 16
    cfg.mesh.update(data=1, fsdp=-1)
