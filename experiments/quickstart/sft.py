"""Quickstart SFT: fine-tune the quickstart pretrain model on bold handwriting only.

    python -m seedjax.main --config=experiments/quickstart/sft.py \
        --workdir=runs/quickstart/sft --config.init_from=runs/quickstart/pretrain
    python -m seedjax.main --config=experiments/quickstart/sft.py:tiny --workdir=/tmp/tiny_sft \
        --config.init_from=/tmp/tiny_pretrain

Same model, loss and step as pretraining (experiments/quickstart/pretrain.py, same variant);
the curated subset is the training digits with mean ink >= 0.325 (the boldest 30%), sampled
resolution-balanced, at a fifth of pretraining's learning rate, starting from its EMA weights.
eval/target_share is the fraction of generated digits that are that bold (held-out prompts).
"""

from experiments.common import make_ci_run
from experiments.quickstart import pretrain
from seedjax.config import parse_arg
from seedjax.schema.evals import generator_entry
from seedjax.schema.stages import sft_config


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, filter="ink >= 0.325")
    cfg = pretrain.get_config(arg.variant)
    cfg.stage = "sft"
    cfg.sft = sft_config()  # target '' = the data filter
    cfg.evals.target_share = generator_entry("target_share")  # on the generator entry's samples
    cfg.data.filter = arg.filter
    cfg.data.balance_resolutions = True
    cfg.init_from_ema = True
    cfg.optimizer.lr = 2e-4
    cfg.optimizer.warmup_steps = 20
    cfg.optimizer.schedule = "constant"
    cfg.ema_decay = 0.99
    cfg.total_steps = 400
    cfg.log_every = 50
    cfg.checkpoint_every = 200
    cfg.sample_every = 400
    cfg.eval_every = 200
    if arg.variant == "tiny":
        make_ci_run(cfg, steps=6, batch_size=8)
        cfg.optimizer.warmup_steps = 1
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
