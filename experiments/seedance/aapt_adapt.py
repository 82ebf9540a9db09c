"""AAPT stage 1, diffusion adaptation: the bidirectional video DiT fine-tuned block-causally.

    python -m seedjax.main --config=experiments/seedance/t2v.py --workdir=runs/seedance/t2v
    python -m seedjax.main --config=experiments/seedance/aapt_adapt.py --workdir=runs/seedance/aapt_adapt \\
        [--config.init_from=runs/seedance/t2v]
    python -m seedjax.tools.stream --workdir=runs/seedance/aapt_adapt --prompt="a red 3 moving left" --frames=32

The same model and data as the video quickstart (experiments/seedance/t2v.py), now with
`model.causal` (a latent frame attends to the text, itself and earlier frames; `window=W`: the
W - 1 frames before it and always the first), `model.recycle` (the previous clean frame
concatenated to the input: teacher forcing in training, the previous generated frame when
streaming) and `diffusion.per_frame_t` (every frame at its own noise level, as a streamed frame
attends to frames made at other levels). The pretraining stage trains it; the bidirectional
checkpoint loads with zero input weights for the recycled channels, so training starts from
the bidirectional model run causally. Samples and the video judges generate frame after frame
with the KV cache (`autoregressive.rollout`), without classifier-free guidance (one cache).

Variants: `quickstart` (default) and `tiny` (CI); `steps=N`, `window=W` (0 = every earlier frame).
The later AAPT stages: aapt_consistency.py (1 NFE a frame), aapt_adversarial.py (student forcing);
the chain: aapt_pipeline.py.
"""

from experiments.seedance._video_common import causal_video_config
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, window=0)
    cfg = causal_video_config(arg.variant, arg.window)
    cfg.init_from = "runs/seedance/t2v"
    if arg.variant == "quickstart":
        cfg.total_steps = 500
        cfg.checkpoint_every = cfg.sample_every = cfg.eval_every = 500
        cfg.optimizer.update(lr=5e-4, warmup_steps=50)
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
