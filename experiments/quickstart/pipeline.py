"""The quickstart pipeline behind `bash launch/quickstart.sh`: pretrain -> SFT -> reward -> RLHF.

    python -m seedjax.pipeline --pipeline=experiments/quickstart/pipeline.py[:tiny] --workdir=runs/quickstart

SFT starts from pretraining; the reward model trains on its own (real digits, perturbed
captions, degraded images); RLHF starts from SFT and maximises the reward model's composite
reward (alignment + a quarter of quality) with a flow-matching regulariser on real digits.
"""

from seedjax.config import parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="quickstart")
    v = arg.variant
    rewards = "{root}/reward#alignment:1,{root}/reward#quality:0.25"
    return [
        dict(name="pretrain", config=f"experiments/quickstart/pretrain.py:variant={v}"),
        dict(name="sft", config=f"experiments/quickstart/sft.py:variant={v}", init_from="pretrain"),
        dict(name="reward", config=f"experiments/quickstart/reward.py:variant={v}"),
        dict(name="rlhf", config=f"experiments/quickstart/rlhf.py:variant={v}", init_from="sft",
             overrides={"rlhf.reward_models": rewards}),
    ]
