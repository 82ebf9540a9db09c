"""Groups every training stage shares: optimizer, flow matching, model input, sampler, sharding rules."""

from __future__ import annotations

import ml_collections

# --------------------------------------------------------------------------- sharding (parallel/sharding.py)

# Logical name -> comma-separated mesh axes ('' = replicated): the default of
# `config.sharding.rules`. Every model in the repo uses only these names; a new name must be
# added here with a default.
DEFAULT_RULES: dict[str, str] = {
    # activations
    "batch": "data,fsdp",
    "seq": "sequence",  # token axis of activations (sequence parallelism)
    "act_embed": "",  # hidden axis of activations
    "act_heads": "tensor",
    "act_mlp": "tensor",
    # parameters
    "embed": "fsdp",  # model width
    "mlp": "tensor",  # feed-forward hidden
    "heads": "tensor",  # attention heads (fused heads * head_dim axis)
    "modulation": "tensor",  # adaLN modulation outputs
    "vocab": "tensor",
    "in_features": "",  # patch / latent channels into the model
    "norm": "",  # norm scales and small vectors
    "layers": "",  # leading layer axis of stacked block parameters (MMDiT model.scan_layers)
    # convolutions (VAE, discriminators)
    "conv_in": "",
    "conv_out": "fsdp",
    "conv_spatial": "",
    # VAE activations: large images / videos are split along the sequence axis
    "vae_frames": "",  # time axis of video activations (set to 'sequence' for temporal splits)
    "vae_height": "sequence",
    "vae_width": "",
}


# --------------------------------------------------------------------------- optimizer (train/state.py)


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        dict(
            name="adamw",  # adamw | adam | sgd
            lr=1e-4,
            schedule="cosine",  # cosine | constant | linear
            warmup_steps=0,
            end_lr_factor=0.0,  # cosine/linear decay to lr * end_lr_factor
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip=1.0,  # global-norm clipping; 0 disables
            grad_accum_steps=1,  # micro-batches per optimizer step
            max_nonfinite_steps=10,  # abort after this many consecutive skipped updates
        )
    )
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- flow matching (diffusion/flow.py)


def diffusion_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        dict(
            timestep_sampling="logit_normal",  # logit_normal | uniform
            logit_mean=0.0,
            logit_std=1.0,
            shift_mode="fixed",  # fixed: s = shift | resolution: s = shift * sqrt(tokens / base_tokens)
            shift=1.0,
            base_tokens=256,
            cfg_dropout=0.1,  # probability of training on the empty caption (enables CFG)
            # Video DiT (seedjax/diffusion/tasks.py): the fraction of a video batch trained as
            # image-to-video, and how often such an example's frame is blanked (CFG on the image).
            i2v_fraction=0.0,
            cond_frame_dropout=0.0,
            # A block-causal video DiT (model.causal): every latent frame at its own flow time
            # (AAPT's adaptation: a streamed frame attends to frames made at other noise levels).
            per_frame_t=False,
            # SeedVR restoration (seedjax/diffusion/tasks.py): every clip is conditioned on its degraded
            # copy (data.degradations), on every frame, through the video DiT's 'concat' channels.
            restore=False,
            # Editing (data.source=edit_triples): probability of training an example without its
            # reference images (their slots masked), so sampling.reference_scale can guide on them.
            reference_dropout=0.0,
        )
    )
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- model input and sampler (models/geometry.py, diffusion/sampling.py)


def input_config(**overrides) -> ml_collections.ConfigDict:
    """What the DiT denoises: pixels ('image') or cached VAE latents ('latent'), in patches."""
    cfg = ml_collections.ConfigDict(dict(key="image", patch_size=4, vae_workdir=""))
    cfg.update(overrides)
    return cfg


def sampling_config(**overrides) -> ml_collections.ConfigDict:
    # paro_plan: the plan file of `python -m seedjax.tools.calibrate_paro`, used when
    # config.model.attention_backend = 'paro' (sampling, and training if set while training).
    # i2v: video sample grids condition on the first frame of the held-out clips they caption.
    # reference_scale: editing's guidance on the reference images (!= 1: a third evaluation a step
    # without them; train with diffusion.reference_dropout), guidance_scale then guides the instruction.
    cfg = ml_collections.ConfigDict(dict(num_steps=30, guidance_scale=3.0, shift=1.0, use_ema=True, paro_plan="",
                                         i2v=False, reference_scale=1.0))
    cfg.update(overrides)
    return cfg
