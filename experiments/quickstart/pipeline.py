"""The quickstart pipelines behind `bash launch/quickstart.sh [full|tiny]`.

    python -m seedjax.pipeline --pipeline=experiments/quickstart/pipeline.py[:VARIANT] --workdir=runs/quickstart_full

Variants:
  fast   one stage: pretraining with a shorter schedule (experiments/quickstart/pretrain.py:fast);
         what `bash launch/quickstart.sh` runs by default, a few minutes on a 2-core CPU.
  full   (default; `quickstart` is the same) pretrain -> SFT -> reward -> RLHF, with the
         1200-step pretraining; `bash launch/quickstart.sh full`.
  tiny   the full chain's stages in their seconds-long CI variants; `bash launch/quickstart.sh tiny`.
  video  one stage: the video quickstart, text-to-video on moving digits
         (experiments/seedance/t2v.py); `bash launch/quickstart.sh video`.

SFT starts from pretraining; the reward model trains on its own (real digits, perturbed
captions, degraded images); RLHF starts from SFT and maximises the reward model's composite
reward (alignment + a quarter of quality) with a flow-matching regulariser on real digits.
launch/quickstart.sh lists the same stages (with their expected durations); keep the two in step
(tests/test_quickstart_launch.py checks it).
"""

from seedjax.config import parse_arg

VARIANTS = ("fast", "full", "quickstart", "tiny", "video")


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="full")
    if arg.variant not in VARIANTS:
        raise ValueError(f"unknown quickstart pipeline variant {arg.variant!r} (fast | full | tiny | video)")
    if arg.variant == "fast":
        return [dict(name="pretrain", config="experiments/quickstart/pretrain.py:variant=fast")]
    if arg.variant == "video":
        return [dict(name="t2v", config="experiments/seedance/t2v.py")]
    v = "tiny" if arg.variant == "tiny" else "quickstart"  # the stage configs' variant
    rewards = "{root}/reward#alignment:1,{root}/reward#quality:0.25"
    return [
        dict(name="pretrain", config=f"experiments/quickstart/pretrain.py:variant={v}"),
        dict(name="sft", config=f"experiments/quickstart/sft.py:variant={v}", init_from="pretrain"),
        dict(name="reward", config=f"experiments/quickstart/reward.py:variant={v}"),
        dict(name="rlhf", config=f"experiments/quickstart/rlhf.py:variant={v}", init_from="sft",
             overrides={"rlhf.reward_models": rewards}),
    ]
