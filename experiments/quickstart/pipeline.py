"""The quickstart pipeline behind `bash launch/quickstart.sh`.

    python -m seedjax.pipeline --pipeline=experiments/quickstart/pipeline.py[:tiny] --workdir=runs/quickstart
"""

from seedjax.config import parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="quickstart")
    v = arg.variant
    return [
        dict(name="pretrain", config=f"experiments/quickstart/pretrain.py:variant={v}"),
    ]
