"""SeedVR2 on bundled data, as one chain: a multi-step restoration DiT, then one step.

    python -m seedjax.pipeline --pipeline=experiments/seedvr/pipeline.py[:tiny] --workdir=runs/seedvr
    python -m seedjax.tools.restore --workdir=runs/seedvr/restore_adversarial --input=my_videos/ --out=restored/

restore (flow matching on degraded -> clean moving digits and stills, window attention, 25 steps)
-> restore_adversarial (RpGAN + approximate R1/R2 + feature matching, 1 step).

Args: `variant` quickstart | tiny (CI-sized stages).
"""

from seedjax.config import parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="quickstart")
    if arg.variant not in ("quickstart", "tiny"):
        raise ValueError(f"unknown variant {arg.variant!r} (quickstart | tiny)")
    s, v = "experiments/seedvr", f"variant={arg.variant}"
    return [
        dict(name="restore", config=f"{s}/restore.py:{v}"),
        dict(name="restore_adversarial", config=f"{s}/restore_adversarial.py:{v}", init_from="restore"),
    ]
