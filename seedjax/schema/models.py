"""Network hyper-parameters: MMDiT, text encoder, reward model, perceptual loss, PatchGAN, VAEs.

The networks themselves live in `seedjax/models/` (the module named in each section); these
are their config groups (`config.model`, `config.text`, `config.reward_model`,
`config.vae.perceptual`, `config.vae.discriminator`, `config.pixel_disc`) and the VAE config
dataclasses with their named settings (`config.vae.model` holds a VAE dataclass's fields).
"""

from __future__ import annotations

import dataclasses
import math
import re

import ml_collections

from data_pipelines.core.tokenizer import VOCAB_SIZE  # captions are byte tokens (the data pipeline's)


# --------------------------------------------------------------------------- MMDiT (models/mmdit.py)


def mmdit_config() -> ml_collections.ConfigDict:
    """MMDiT hyper-parameters ('small' size). Every value has a type; no None values."""
    cfg = ml_collections.ConfigDict()
    cfg.in_channels = 64  # channels of a (patchified) image token, e.g. 16 latent ch x 2 x 2
    cfg.out_channels = 0  # 0 = same as in_channels
    cfg.num_heads = 8
    cfg.head_dim = 64  # hidden = num_heads * head_dim
    cfg.depth_double = 6  # dual-stream blocks
    cfg.depth_single = 12  # single-stream blocks
    cfg.mlp_ratio = 4.0
    cfg.text_dim = 512  # width of text_embeddings (diffusers: joint_attention_dim)
    cfg.pooled_dim = 512  # width of pooled text (diffusers: pooled_projection_dim)
    cfg.guidance_embed = False  # guidance-scale embedder (guidance-distilled models)
    cfg.size_embed = False  # target-resolution embedder (Seedream mixed resolution)
    # Meta-info embedder (SeedEdit 3.0): the task (t2i / edit / multi-reference), the target's aspect
    # ratio and the number of references, added to the conditioning; dropped with the caption.
    cfg.meta_embed = False
    cfg.axes_dims_rope = (8, 28, 28)  # must sum to head_dim
    cfg.rope_theta = 10000.0
    cfg.repa_layer = -1  # block whose image features `return_features` gives; -1 off
    cfg.remat = False  # rematerialise each block in the backward pass (the one remat on/off switch)
    # What a rematerialised block saves: 'full' (= 'nothing_saveable': recompute everything),
    # 'dots_saveable', 'dots_with_no_batch_dims_saveable', ... (mmdit.REMAT_POLICIES); only with remat.
    cfg.remat_policy = "nothing_saveable"
    # Stack each block kind's parameters on a leading 'layers' axis and run it under nnx.scan:
    # compile time independent of depth. Parameter layout differs (see models/block_layout.py).
    cfg.scan_layers = False
    cfg.dtype = "float32"  # matmul compute dtype: 'float32' | 'bfloat16'
    cfg.attention_backend = "dense"  # a name registered in seedjax.models.attention
    # What proj_out predicts. 'x0': the clean image, returned as the velocity it implies,
    # (x_t - x0) / max(t, x0_min_t); pixel-space models with wide patches learn this far
    # faster than a velocity, which must carry the full-rank noise (Li & He 2025, "JiT").
    cfg.prediction = "velocity"  # 'velocity' | 'x0'
    cfg.x0_min_t = 0.05
    # Editing (reference images packed after the target, seedjax.models.geometry.REFERENCE_ROPE):
    # 'per_reference' gives reference r its own index r + 1 on the leading RoPE axis; 'kontext'
    # puts every reference at 1, as FLUX.1 Kontext does (use it to fine-tune Kontext weights).
    cfg.reference_rope = "per_reference"
    # 'joint': references in the target's sequence, attending to it (Kontext); 'cached': references
    # encoded once at t = 0, attending to themselves only, their keys and values reused at every
    # sampler step (seedjax/models/reference_cache.py).
    cfg.reference_attention = "joint"
    return cfg


MMDIT_PRESETS = {
    "tiny": dict(num_heads=4, head_dim=32, depth_double=2, depth_single=4, text_dim=128, pooled_dim=128,
                 in_channels=16, axes_dims_rope=(8, 12, 12)),
    "small": {},
    "base": dict(num_heads=16, head_dim=64, depth_double=12, depth_single=24, text_dim=1024, pooled_dim=1024),
    "flux_dev": dict(num_heads=24, head_dim=128, depth_double=19, depth_single=38, text_dim=4096, pooled_dim=768,
                     axes_dims_rope=(16, 56, 56), guidance_embed=True),
    "flux_schnell": dict(num_heads=24, head_dim=128, depth_double=19, depth_single=38, text_dim=4096,
                         pooled_dim=768, axes_dims_rope=(16, 56, 56)),
}


def mmdit_preset(name: str) -> ml_collections.ConfigDict:
    """`mmdit_config()` with a named size: 'tiny', 'small', 'base', 'flux_dev', 'flux_schnell'."""
    if name not in MMDIT_PRESETS:
        raise ValueError(f"unknown MMDiT preset {name!r}; choose one of {sorted(MMDIT_PRESETS)}")
    cfg = mmdit_config()
    cfg.update(MMDIT_PRESETS[name])
    return cfg


# --------------------------------------------------------------------------- text encoder (models/text.py)


def video_dit_config(preset: str = "tiny", **overrides) -> ml_collections.ConfigDict:
    """Video DiT hyper-parameters (models/video_dit.py): the MMDiT's keys (same meaning; the
    stream widths, RoPE, remat, dtype, backend, prediction) plus the Seedance ones below."""
    cfg = mmdit_config()
    del cfg["depth_double"], cfg["depth_single"]
    cfg.kind = "video_dit"  # what models/generator.py builds ('mmdit' when absent)
    cfg.depth = 2  # blocks, each one spatial (dual-stream, per frame) + one temporal sublayer
    cfg.axes_dims_rope = (8, 12, 12)  # (time, row, column)
    # 'decoupled': spatial attention within frames, temporal across frames (Seedance);
    # 'full_3d': every token attends to every token (the baseline, same weights); 'window': see cfg.window.
    cfg.attention = "decoupled"
    cfg.temporal_window = 0  # temporal layers attend within windows of this many frames (0 = all)
    # Seedance's windowed temporal layers: a token attends across frames to every token of its spatial
    # window of (rows, cols) tokens; (1, 1) = its own position only, 0 = the whole side of the frame.
    cfg.temporal_spatial_window = (1, 1)
    # Task conditioning: 'concat' (clean frames + mask along channels, Seedance) or
    # 'timestep' (per-frame timesteps, t = 0 on clean conditioning frames, Wan2.2 TI2V).
    cfg.condition = "concat"
    cfg.sequence_parallel = "ulysses"  # full_3d attention on a sequence mesh axis: 'ulysses' | 'ring'
    # AAPT's block-causal mode: a frame attends to the text, itself and earlier frames (the text to text
    # only); causal_window = W > 0 keeps the W - 1 frames before it plus the first (0 = all earlier ones).
    cfg.causal = False
    cfg.causal_window = 0
    cfg.recycle = False  # (causal) the previous clean frame concatenated with the noisy one along channels
    # attention='window' (SeedVR / SeedVR2): both sublayers attend within 3-D (t, h, w) windows, the
    # spatial one also to the text, the second with windows shifted by half a window (models/adaptive_windows.py).
    # With prediction='x0' and condition='concat': the clean clip is predicted as the conditioning clip plus
    # the network's output (restoration learns the correction to the degraded clip).
    cfg.residual = False
    cfg.window = ml_collections.ConfigDict()
    cfg.window.counts = (4, 3, 3)  # windows per (t, h, w) axis on the reference grid (SeedVR2's)
    cfg.window.reference = (0, 0)  # the (h, w) token grid the counts refer to: the training resolution's
    # How windows follow another resolution: 'adaptive' (SeedVR2: the grid rescaled to the reference's area
    # first, so windows keep their token count and follow the aspect ratio), 'fixed' (SeedVR: the reference
    # grid's window size at every resolution), 'grow' (the counts of the grid itself: windows grow with it).
    cfg.window.rule = "adaptive"
    cfg.window.max_frames = 30  # the temporal window count is taken over at most this many frames
    cfg.window.backend = "dense"  # 'dense' (masked, any sequence parallelism) | 'block_sparse' (the kernels)
    cfg.window.block = 64  # block_sparse: the kernels' block size
    cfg.update(VIDEO_DIT_PRESETS[preset])
    cfg.update(overrides)
    return cfg


VIDEO_DIT_PRESETS = {
    "tiny": dict(num_heads=4, head_dim=32, depth=2, text_dim=128, pooled_dim=128, in_channels=48),
    "small": dict(num_heads=6, head_dim=64, depth=8, text_dim=256, pooled_dim=256, axes_dims_rope=(16, 24, 24)),
    "base": dict(num_heads=16, head_dim=64, depth=24, text_dim=1024, pooled_dim=1024, axes_dims_rope=(16, 24, 24)),
}


def text_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.vocab_size = VOCAB_SIZE
    cfg.width = 256
    cfg.depth = 4
    cfg.num_heads = 4
    cfg.mlp_ratio = 4.0
    cfg.max_len = 64  # longest token sequence (learned positions)
    cfg.dtype = "float32"  # matmul compute dtype
    return cfg


# --------------------------------------------------------------------------- reward model (models/reward.py)


def reward_model_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.heads = ("alignment", "quality")  # reward dimensions, one question token each
    cfg.image_size = 32  # inputs of another size are resized (bilinear) to this
    cfg.channels = 3
    cfg.patch_size = 4
    cfg.stem_channels = 32  # two 3x3 convolutions before patchifying; 0 = plain patch embedding
    cfg.width = 128
    cfg.depth = 4
    cfg.num_heads = 4
    cfg.mlp_ratio = 4.0
    cfg.max_text_len = 32
    cfg.vocab_size = VOCAB_SIZE
    cfg.dtype = "float32"  # matmul compute dtype
    return cfg


# --------------------------------------------------------------------------- perceptual loss (models/perceptual.py)


def perceptual_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        dict(weights="", lpips_weights="", depth=5, fallback_seed=0)
    )
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- PatchGAN (models/discriminators.py)


def patch_discriminator_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        dict(
            channels=64,  # width of the first layer (doubling per layer, capped at 8x)
            num_layers=3,  # stride-2 layers (3 -> 70x70 patches)
            norm_groups=32,  # GroupNorm groups (reduced to fit narrow layers)
            temporal_strides=1,  # 3D: how many of the stride-2 layers also halve time
        )
    )
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- image VAE (models/vae.py)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    latent_channels: int = 16
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # one block per entry; factor 2**(len-1)
    layers_per_block: int = 2  # ResNet blocks per encoder block (decoder: one more)
    norm_groups: int = 32
    mid_attention: bool = True
    use_quant_conv: bool = True  # 1x1 convs around the latent (diffusers' quant_conv)
    use_post_quant_conv: bool = True
    # The diffusion model sees (z - shift_factor) * scaling_factor.
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    dtype: str = "float32"  # compute dtype; parameters are always float32

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        for c in self.block_channels:
            if c % self.norm_groups:
                raise ValueError(
                    f"VAE block width {c} (base_channels * channel_mult) is not divisible by norm_groups={self.norm_groups}"
                )

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.downsample_factor
        return height // f, width // f, self.latent_channels


def image_vae_config(name: str = "f8c16", **overrides) -> VAEConfig:
    """'f{factor}c{channels}' (factor 8, 16, 32, ...) -> VAEConfig; `overrides` set any field.

    Deeper settings repeat the last multiplier: f8 = (1, 2, 4, 4), f16 = (1, 2, 4, 4, 4), ...
    """
    m = re.fullmatch(r"f(\d+)c(\d+)", name)
    if not m or int(m.group(1)) < 2 or int(m.group(1)) & (int(m.group(1)) - 1):
        raise ValueError(f"VAE setting {name!r} must look like 'f16c64' with a power-of-two factor >= 2")
    levels = int(math.log2(int(m.group(1))))
    mult = (1, 2, 4, 4)[: levels + 1] + (4,) * max(0, levels + 1 - 4)
    fields = dict(latent_channels=int(m.group(2)), channel_mult=mult)
    fields.update(overrides)
    return VAEConfig(**fields)


# --------------------------------------------------------------------------- video VAE (models/video_vae.py)


@dataclasses.dataclass(frozen=True)
class VideoVAEConfig:
    in_channels: int = 3
    latent_channels: int = 48
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 4, 4)  # spatial factor 2**(len-1)
    # One flag per downsampling step (len(channel_mult) - 1); temporal factor 2**count.
    temporal_downsample: tuple[bool, ...] = (False, False, True, True)
    layers_per_block: int = 2
    norm_groups: int = 32
    mid_attention: bool = True
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in self.temporal_downsample))
        if len(self.temporal_downsample) != len(self.channel_mult) - 1:
            raise ValueError(
                f"temporal_downsample has {len(self.temporal_downsample)} flags; need one per downsampling "
                f"step ({len(self.channel_mult) - 1})"
            )
        for c in self.block_channels:
            if c % self.norm_groups:
                raise ValueError(f"video VAE block width {c} is not divisible by norm_groups={self.norm_groups}")

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal_factor


def video_vae_config(name: str = "t4s16c48", **overrides) -> VideoVAEConfig:
    """'t{temporal}s{spatial}c{channels}' -> VideoVAEConfig. Temporal steps sit at the deepest levels."""
    m = re.fullmatch(r"t(\d+)s(\d+)c(\d+)", name)
    t, s = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not m or t < 1 or s < 2 or t & (t - 1) or s & (s - 1) or t > s:
        raise ValueError(f"video VAE setting {name!r} must look like 't4s16c48' (powers of two, t <= s)")
    steps, t_steps = int(math.log2(s)), int(math.log2(t))
    fields = dict(
        latent_channels=int(m.group(3)),
        channel_mult=((1, 2, 4, 4) + (4,) * steps)[: steps + 1],
        temporal_downsample=(False,) * (steps - t_steps) + (True,) * t_steps,
    )
    fields.update(overrides)
    return VideoVAEConfig(**fields)
