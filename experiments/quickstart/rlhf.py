"""Quickstart RLHF: maximise the quickstart reward model's composite reward, ReFL-style.

    python -m seedjax.main --config=experiments/quickstart/rlhf.py --workdir=runs/quickstart/rlhf \
        --config.init_from=runs/quickstart/sft \
        --config.rlhf.reward_models=runs/quickstart/reward#alignment:1,runs/quickstart/reward#quality:0.25

The generator is the quickstart model (experiments/quickstart/pretrain.py, same variant) from
`init_from`; the reward is P(yes) of the reward model's alignment head plus a quarter of its
quality head's. `--config.rlhf.fm_weight=0` drops the real-data regulariser (reward hacking).
eval/* on held-out prompts: the independent classifier's prompt_accuracy and frechet_distance,
and the reward models' scores of the same images.
"""

from experiments.common import make_ci_run
from experiments.quickstart import pretrain
from seedjax.config import parse_arg
from seedjax.schema.evals import generator_entry
from seedjax.schema.stages import rlhf_config


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1)
    cfg = pretrain.get_config(arg.variant)
    cfg.stage = "rlhf"
    cfg.rlhf = rlhf_config(
        num_prompts=8,
        num_steps=10,  # a cheaper unroll than the 30-step evaluation sampler
        guidance_scale=cfg.sampling.guidance_scale,
        shift=cfg.sampling.shift,
        grad_steps=1,
        stop_window=(0.1, 0.6),
        fm_weight=1.0,
    )
    cfg.evals.reward = generator_entry("rlhf_reward")  # the reward models on the generator entry's samples
    cfg.init_from_ema = True
    cfg.ema_decay = 0.0  # evaluate the trained weights themselves
    cfg.sampling.use_ema = False
    cfg.optimizer.lr = 5e-5
    cfg.optimizer.warmup_steps = 10
    cfg.optimizer.schedule = "constant"
    cfg.batch_size = 16  # the real-data batch of the flow-matching regulariser
    cfg.total_steps = 200
    cfg.log_every = 10
    cfg.checkpoint_every = 100
    cfg.sample_every = 200
    cfg.eval_every = 50
    cfg.eval.num_prompts = 200
    if arg.variant == "tiny":
        cfg.rlhf.num_prompts = 2
        cfg.rlhf.num_steps = 4
        cfg.rlhf.stop_window = (0.0, 0.8)
        make_ci_run(cfg, steps=4, batch_size=4)
        cfg.optimizer.warmup_steps = 1
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
