"""Text-to-video (and image-to-video) in pixel space on your own captioned videos.

    python -m seedjax.main --config=experiments/custom/folder_video.py:path=/data/clips --workdir=runs/myvideo
    python -m seedjax.main --config=experiments/custom/folder_video.py:path=/data/clips.jsonl,frames=17,size=64 \
        --workdir=runs/myvideo64
    python -m seedjax.main --config=experiments/custom/folder_video.py:tiny --workdir=/tmp/myvideo_tiny \
        --config.data.path=/data/clips

Data (`data_pipelines/sources/videos.py`, decoded with PyAV): a folder of `.mp4` / `.webm` /
`.gif` files, each with a same-name `.txt` caption (`dog.mp4` + `dog.txt`), or a JSONL manifest
with per-shot captions and cut times, one clip a line:
`{"path": "a/dog.mp4", "shots": [{"caption": "a dog runs", "start": 0, "end": 2.5}, ...]}`.
Clips are resampled to `data.video.fps` frames a second, cut to `frames` frames and resized to
cover `size` x `size`; unreadable videos, videos shorter than a clip and missing captions are
skipped and counted (`data/skipped_<kind>` in metrics.jsonl). Mixed lengths and sizes: set
`data.video.buckets='FxHxW,...'` (one bucket per global batch; '1xHxW' trains text-to-image on
frames) with `data.video.bucket_weights`.

Args (`:key=value,...`): `path`, `source` (`video_folder` | `video_jsonl`; '' = from `path`),
`frames` (default 9), `size` (default 32), `i2v` (fraction of clips trained as image-to-video,
default 0.2), `steps`, `variant` (`default` | `tiny`). The model is the video quickstart's
(`experiments/seedance/_video_common.py`); scale it with `--config.model.*` (e.g. `depth`, `num_heads`)
and `--config.mesh.sequence=N` to split long clips over devices. There is no held-out judge
for your own videos: `config.evals` is empty and the sample grids (`samples/step_N.gif`) show
progress.
"""

from experiments.seedance._video_common import video_config
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", path="", source="", frames=9, size=32, i2v=0.2, steps=-1)
    if arg.variant not in ("default", "tiny"):
        raise ValueError(f"unknown variant {arg.variant!r} (default | tiny)")
    cfg = video_config("tiny" if arg.variant == "tiny" else "quickstart", i2v_fraction=arg.i2v)
    cfg.data.source = arg.source or ("video_jsonl" if arg.path.endswith(".jsonl") else "video_folder")
    cfg.data.path = arg.path
    cfg.data.image_size = arg.size
    frames = 4 if arg.variant == "tiny" else arg.frames
    cfg.data.video.update(num_frames=frames, buckets=f"{frames}x{arg.size}x{arg.size}", bucket_weights="")
    cfg.diffusion.base_tokens = (arg.size // cfg.input.patch_size) ** 2
    cfg.evals = type(cfg.evals)()  # no judge for your own videos
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
