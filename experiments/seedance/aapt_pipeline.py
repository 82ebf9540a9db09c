"""AAPT on moving digits, as one chain: a video DiT made real-time, one network evaluation a frame.

    python -m seedjax.pipeline --pipeline=experiments/seedance/aapt_pipeline.py[:tiny] --workdir=runs/aapt
    python -m seedjax.tools.stream --workdir=runs/aapt/aapt_adversarial --prompt="a red 3 moving left" --frames=32

t2v (the bidirectional video DiT, experiments/seedance/t2v.py) -> aapt_adapt (block-causal,
recycling, teacher forcing) -> aapt_consistency (1 NFE a frame) -> aapt_adversarial (student
forcing against the frame discriminator, R3GAN). An existing t2v run can stand in for the first
stage: link it as <root>/t2v and run `--only=aapt_adapt,aapt_consistency,aapt_adversarial`.

Args: `variant` quickstart | tiny (CI-sized stages); `window` W (the causal window, 0 = all frames).
"""

from seedjax.config import parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="quickstart", window=0)
    if arg.variant not in ("quickstart", "tiny"):
        raise ValueError(f"unknown variant {arg.variant!r} (quickstart | tiny)")
    s, v = "experiments/seedance", f"variant={arg.variant},window={arg.window}"
    return [
        dict(name="t2v", config=f"{s}/t2v.py:variant={arg.variant}"),
        dict(name="aapt_adapt", config=f"{s}/aapt_adapt.py:{v}", init_from="t2v"),
        dict(name="aapt_consistency", config=f"{s}/aapt_consistency.py:{v}", init_from="aapt_adapt"),
        dict(name="aapt_adversarial", config=f"{s}/aapt_adversarial.py:{v}", init_from="aapt_consistency"),
    ]
