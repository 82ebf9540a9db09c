"""Text-to-image pretraining, then instruction editing from its weights (Seedream 4.0's order).

    python -m seedjax.pipeline --pipeline=experiments/seedream/edit_pipeline.py --workdir=runs/edit_pipeline
    python -m seedjax.pipeline --pipeline=experiments/seedream/edit_pipeline.py:variant=tiny --workdir=/tmp/edit

`t2i` is experiments/seedream/scenes_pretrain.py with room for 64 text tokens (the instructions'
length), so that `edit` (experiments/seedream/edit.py) loads every parameter of it; `edit` trains
generation and editing jointly, `t2i_share` of its rows scene captions (0: editing alone).
"""

from seedjax.config import parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="default", t2i_share=0.3)
    s, variant = "experiments/seedream", f"variant={arg.variant}"
    return [
        dict(name="t2i", config=f"{s}/scenes_pretrain.py:{variant}", overrides={"data.max_text_len": "64"}),
        dict(name="edit", config=f"{s}/edit.py:{variant},t2i_share={arg.t2i_share}", init_from="t2i"),
    ]
