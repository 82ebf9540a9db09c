"""Token geometry: how what a DiT denoises is laid out as a sequence of patch tokens.

One place describes the input once, for the models, the losses, the samplers, the FLOP
counts and the `sample` hooks:

- `Geometry`: F frames of H x W x C cut into (temporal_patch x patch x patch) patches. A still
  image is one frame. Tokens run row-major over (frame, row, column); a token's channels are
  ordered (c, pt, ph, pw), which for one frame is Flux's packing (c, ph, pw).
- `PackedGeometry`: a target plus reference inputs (editing: "this image, in the style of
  these two") in one token sequence; the target's tokens come first, the references are told
  apart by the leading RoPE axis (`REFERENCE_ROPE` schemes), and `target_mask` says which
  tokens the loss sees.

Samples and generated arrays carry a frame axis: [B, F, H, W, C] (a still image: F = 1).
Batches of still images stay [B, H, W, C]; `tokens` accepts both.
"""

from __future__ import annotations

import dataclasses

import einops
import jax
import jax.numpy as jnp
import numpy as np

from seedjax.models import codec


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What the DiT denoises: `frames` x `height` x `width` x `channels`, in patches."""

    frames: int
    height: int
    width: int
    channels: int
    patch: int
    temporal_patch: int = 1

    def __post_init__(self):
        for name in ("frames", "height", "width", "channels", "patch", "temporal_patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"Geometry: {name} must be >= 1, got {getattr(self, name)}")
        if self.height % self.patch or self.width % self.patch:
            raise ValueError(f"Geometry: patch size {self.patch} does not divide {self.height}x{self.width}")
        if self.frames % self.temporal_patch:
            raise ValueError(f"Geometry: temporal patch {self.temporal_patch} does not divide {self.frames} frames")

    @classmethod
    def of(cls, config) -> "Geometry":
        """The geometry a diffusion config samples: pixels, or with input.key=latent the latent grid
        of the VAE in config.input.vae_workdir. Pixel videos (input.key=video) have
        `data.video.num_frames` frames, a video VAE's latents 1 + (num_frames - 1) // its temporal
        factor (`codec.input_frames`), everything else one."""
        h, w, c = codec.input_shape(config)
        return cls(codec.input_frames(config), h, w, c, config.input.patch_size)

    @classmethod
    def of_array(cls, x, patch: int) -> "Geometry":
        """The geometry of a batch [B, H, W, C] or [B, F, H, W, C] (buckets: each batch its own)."""
        if x.ndim not in (4, 5):
            raise ValueError(f"Geometry.of_array: expected [B, H, W, C] or [B, F, H, W, C], got shape {x.shape}")
        frames, (h, w, c) = (x.shape[1] if x.ndim == 5 else 1), x.shape[-3:]
        return cls(frames, h, w, c, patch)

    @classmethod
    def image(cls, height: int, width: int, channels: int, patch: int) -> "Geometry":
        return cls(1, height, width, channels, patch)

    @classmethod
    def video(cls, frames: int, height: int, width: int, channels: int, patch: int,
              temporal_patch: int = 1) -> "Geometry":
        return cls(frames, height, width, channels, patch, temporal_patch)

    # ----------------------------------------------------------------- sizes

    @property
    def is_image(self) -> bool:
        return self.frames == 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(F, H, W, C) of one example."""
        return self.frames, self.height, self.width, self.channels

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens along (frames, rows, columns)."""
        return self.frames // self.temporal_patch, self.height // self.patch, self.width // self.patch

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.grid[1:]

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def token_dim(self) -> int:
        return self.channels * self.temporal_patch * self.patch**2

    @property
    def token_shape(self) -> tuple[int, int]:
        return self.num_tokens, self.token_dim

    # ----------------------------------------------------------------- layout

    def tokens(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] (one frame) or [B, F, H, W, C] -> [B, num_tokens, token_dim]."""
        if x.ndim == 4:
            x = x[:, None]
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"Geometry.tokens: input of shape {x.shape} is not [B, {', '.join(map(str, self.shape))}]"
                             f"{' (or [B, H, W, C])' if self.is_image else ''}")
        return einops.rearrange(x, "b (t pt) (h ph) (w pw) c -> b (t h w) (c pt ph pw)",
                                pt=self.temporal_patch, ph=self.patch, pw=self.patch)

    def frames_of(self, tokens: jax.Array) -> jax.Array:
        """Inverse of `tokens`: [B, num_tokens, token_dim] -> [B, F, H, W, C]."""
        if tuple(tokens.shape[1:]) != self.token_shape:
            raise ValueError(f"Geometry.frames_of: tokens of shape {tokens.shape} are not [B, {self.num_tokens}, "
                             f"{self.token_dim}] ({self})")
        t, h, w = self.grid
        return einops.rearrange(tokens, "b (t h w) (c pt ph pw) -> b (t pt) (h ph) (w pw) c", t=t, h=h, w=w,
                                pt=self.temporal_patch, ph=self.patch, pw=self.patch)

    def images_of(self, tokens: jax.Array) -> jax.Array:
        """[B, num_tokens, token_dim] -> [B, H, W, C] for a one-frame geometry."""
        if not self.is_image:
            raise ValueError(f"Geometry.images_of: {self.frames} frames are not one image")
        return self.frames_of(tokens)[:, 0]

    def noise(self, rng: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
        """Standard normal tokens [n, num_tokens, token_dim]: where every sampler starts."""
        return jax.random.normal(rng, (n, *self.token_shape), dtype)

    def position_ids(self, index: int = 0) -> np.ndarray:
        """[num_tokens, 3] RoPE ids (index or frame, row, column) in token order.

        For one frame this is Flux's img_ids (0, row, col). Video frames take the leading
        axis; `index` offsets it (a packed sequence's reference inputs).
        """
        t, h, w = np.meshgrid(np.arange(self.grid[0]), np.arange(self.grid[1]), np.arange(self.grid[2]),
                              indexing="ij")
        return np.stack([t + index, h, w], axis=-1).reshape(-1, 3).astype(np.float32)


# How reference inputs are placed on the leading RoPE axis (config.model.reference_rope):
# 'kontext': every reference at index 1, the target at 0 (FLUX.1 Kontext, diffusers'
#   FluxKontextPipeline); 'per_reference': reference r at index r + 1 (Qwen-Image-Edit, OmniGen2),
#   so two references of one size stay apart.
REFERENCE_ROPE = ("kontext", "per_reference")


@dataclasses.dataclass(frozen=True)
class PackedGeometry:
    """A target and reference inputs in one sequence: [target tokens | reference 1 | ...]."""

    target: Geometry
    references: tuple[Geometry, ...] = ()

    def __post_init__(self):
        dims = {g.token_dim for g in (self.target, *self.references)}
        if len(dims) != 1:
            raise ValueError(f"PackedGeometry: every input needs the same token width, got {sorted(dims)}")

    @property
    def parts(self) -> tuple[Geometry, ...]:
        return (self.target, *self.references)

    @property
    def num_tokens(self) -> int:
        return sum(g.num_tokens for g in self.parts)

    @property
    def token_dim(self) -> int:
        return self.target.token_dim

    def tokens(self, target: jax.Array, references: tuple[jax.Array, ...] = ()) -> jax.Array:
        if len(references) != len(self.references):
            raise ValueError(f"PackedGeometry: {len(self.references)} references expected, got {len(references)}")
        return jnp.concatenate([g.tokens(x) for g, x in zip(self.parts, (target, *references))], axis=1)

    def split(self, tokens: jax.Array) -> tuple[jax.Array, ...]:
        """The packed sequence back into each input's tokens (target first)."""
        bounds = np.cumsum([g.num_tokens for g in self.parts])[:-1]
        return tuple(jnp.split(tokens, bounds, axis=1))

    def position_ids(self, scheme: str = "per_reference") -> np.ndarray:
        """[num_tokens, 3] RoPE ids: the target at index 0, the references as `scheme` says
        (REFERENCE_ROPE); their row and column ids overlap the target's, the index tells them apart."""
        if scheme not in REFERENCE_ROPE:
            raise ValueError(f"reference RoPE scheme must be one of {', '.join(REFERENCE_ROPE)}, got {scheme!r}")
        index = lambda i: min(i, 1) if scheme == "kontext" else i
        return np.concatenate([g.position_ids(index=index(i)) for i, g in enumerate(self.parts)])

    def target_mask(self) -> np.ndarray:
        """[num_tokens] 1.0 on the target's tokens (what the loss and the sampler update), 0.0 on references."""
        return np.concatenate([np.full(g.num_tokens, float(i == 0), np.float32) for i, g in enumerate(self.parts)])
