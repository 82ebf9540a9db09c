"""Reward-model training: yes/no answers and Bradley-Terry preferences, one loss per head.

Each batch of `reward_pairs` data (see data_pipelines/sources/reward_pairs.py) holds real images with
their true caption and a perturbed caption. On device, each image also gets a degraded copy
(blur, noise, a stamp or a mosaic patch). What each head learns from:

    head        "yes" examples                    "no" examples / preference losers
    alignment   (image, true caption)             (image, perturbed caption)
    quality     (image, either caption)           (degraded image, true caption)

Per head the loss is  bce_weight * [BCE on its yes/no examples, classes weighted equally]
                    + bt_weight  * -log sigmoid(score(winner) - score(loser))   (Bradley-Terry)
with score = the log-odds of "yes". Held-out accuracy per head (and per perturbation or
degradation kind) comes from the `reward_accuracy` evaluator (seedjax/eval/reward_accuracy.py);
`seedjax.train.params.load_reward_model` gives RLHF a trained model.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import data_pipelines
from seedjax.models import augment
from seedjax.models.reward import RewardModel
from seedjax.schema.stages import DEGRADATIONS
from seedjax.train.state import make_optimizer, nonfinite_streak, total_nonfinite, value_and_grad
from seedjax.train.stage import Stage

HEAD_NEGATIVES = {"alignment": "caption", "quality": "image"}  # what makes a "no" for each head kind


# --------------------------------------------------------------------------- state


class RewardState(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        check_data(config)
        self.model = RewardModel(config.reward_model, rngs)
        self.optimizer = make_optimizer(self.model, config.optimizer, config.total_steps)


def check_data(config) -> None:
    for head in config.reward_model.heads:
        if head not in HEAD_NEGATIVES:
            raise ValueError(f"reward_model.heads: unknown head {head!r}; the reward stage trains {tuple(HEAD_NEGATIVES)}")
    if config.data.source != "reward_pairs":
        raise ValueError(f"data.source must be 'reward_pairs' for the reward stage (true and perturbed captions), "
                         f"got {config.data.source!r}")
    channels = data_pipelines.channels(config.data)
    if channels != config.reward_model.channels:
        raise ValueError(f"reward_model.channels={config.reward_model.channels} but the data has {channels} channels")
    if config.data.max_text_len > config.reward_model.max_text_len:
        raise ValueError(f"data.max_text_len={config.data.max_text_len} exceeds "
                         f"reward_model.max_text_len={config.reward_model.max_text_len}")


def init(config, rngs: nnx.Rngs) -> RewardState:
    return RewardState(config, rngs)


# --------------------------------------------------------------------------- image negatives


def _degrade_one(image01: jax.Array, key: jax.Array, kinds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One image [H, W, C] in [0, 1] -> (degraded image, index into DEGRADATIONS)."""
    h, w, _ = image01.shape
    k_kind, k_strength, k_box, k_pattern = jax.random.split(key, 4)
    kind = kinds[jax.random.randint(k_kind, (), 0, kinds.shape[0])]
    strength = jax.random.uniform(k_strength)

    blurred = augment.gaussian_blur(image01, 1.0 + 1.0 * strength)
    noisy = image01 + (0.12 + 0.2 * strength) * jax.random.normal(k_pattern, image01.shape)
    # A box covering 15-40% of the height and 40-90% of the width, anywhere in the image.
    size = jax.random.uniform(k_box, (4,))
    bh, bw = (0.15 + 0.25 * size[0]) * h, (0.4 + 0.5 * size[1]) * w
    y0, x0 = size[2] * (h - bh), size[3] * (w - bw)
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = ((ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw))[..., None]
    # Stamp: bright text-like strokes (random vertical bars on alternate rows) over the box.
    strokes = jax.random.bernoulli(k_pattern, 0.45, (h // 2 + 1, w)).repeat(2, axis=0)[:h, :, None]
    stamp = jnp.where(box & strokes, 0.6 * image01 + 0.4 + 0.3 * strength, image01)
    # Mosaic: the box replaced by its average over blocks of `block` pixels.
    block = max(2, h // 8)
    pooled = image01[: h // block * block, : w // block * block].reshape(h // block, block, w // block, block, -1)
    pooled = jnp.repeat(jnp.repeat(pooled.mean(axis=(1, 3)), block, 0), block, 1)
    pooled = jnp.pad(pooled, ((0, h - pooled.shape[0]), (0, w - pooled.shape[1]), (0, 0)), mode="edge")
    mosaic = jnp.where(box, pooled, image01)
    out = jnp.stack([blurred, noisy, stamp, mosaic])[kind]
    return jnp.clip(out, 0.0, 1.0), kind


def degrade(images: jax.Array, key: jax.Array, kinds=DEGRADATIONS) -> tuple[jax.Array, jax.Array]:
    """Degraded copies of images [B, H, W, C] in [-1, 1]: (images, kind index [B] into DEGRADATIONS)."""
    unknown = [k for k in kinds if k not in DEGRADATIONS]
    if unknown or not kinds:
        raise ValueError(f"reward.degradations: {unknown or kinds!r}; use a non-empty subset of {DEGRADATIONS}")
    ids = jnp.asarray([DEGRADATIONS.index(k) for k in kinds], jnp.int32)
    out, kind = jax.vmap(lambda x, k: _degrade_one(x, k, ids))((images + 1.0) / 2.0,
                                                              jax.random.split(key, images.shape[0]))
    return out * 2.0 - 1.0, kind


def jitter(images: jax.Array, key: jax.Array) -> jax.Array:
    """Mild geometric and stroke augmentation of images [B, H, W, C] in [-1, 1]."""

    def one(x, k):
        k1, k2 = jax.random.split(k)
        x = augment.random_affine(x, k1, max_rotation_deg=10.0, scale_range=(0.85, 1.05), max_shift=0.08)
        return augment.random_stroke(x, k2, thin=0.4, thick=0.6)

    out = jax.vmap(one)((images + 1.0) / 2.0, jax.random.split(key, images.shape[0]))
    return jnp.clip(out, 0.0, 1.0) * 2.0 - 1.0


def degradation_kinds(config) -> tuple[str, ...]:
    return tuple(k.strip() for k in config.reward.degradations.split(",") if k.strip())


# --------------------------------------------------------------------------- loss


def reward_examples(batch: dict, rng: jax.Array, config) -> dict:
    """The three (image, caption) views of a batch: matching, perturbed caption, degraded image."""
    k_aug, k_deg = jax.random.split(rng)
    images = batch["image"]
    if config.reward.augment:
        images = jitter(images, k_aug)
    degraded, degradation = degrade(images, k_deg, degradation_kinds(config))
    return {"images": images, "degraded": degraded, "degradation": degradation,
            "tokens": batch["tokens"], "text_mask": batch["text_mask"],
            "negative_tokens": batch["negative_tokens"], "negative_text_mask": batch["negative_text_mask"]}


def view_scores(model: RewardModel, ex: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Scores [B, heads] of (image, caption), (image, perturbed caption), (degraded image, caption), in one pass."""
    b = ex["images"].shape[0]
    images = jnp.concatenate([ex["images"], ex["images"], ex["degraded"]])
    tokens = jnp.concatenate([ex["tokens"], ex["negative_tokens"], ex["tokens"]])
    mask = jnp.concatenate([ex["text_mask"], ex["negative_text_mask"], ex["text_mask"]])
    s = model.score(images, tokens, mask)
    return s[:b], s[b:2 * b], s[2 * b:]


def head_pairs(heads, s_match, s_caption, s_image) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
    """Per head: (winner scores, loser scores, extra "yes" scores) — see the module table."""
    out = {}
    for i, head in enumerate(heads):
        if HEAD_NEGATIVES[head] == "caption":
            out[head] = (s_match[:, i], s_caption[:, i], None)
        else:
            out[head] = (s_match[:, i], s_image[:, i], s_caption[:, i])
    return out


def yes_no_loss(yes: jax.Array, no: jax.Array) -> jax.Array:
    """Binary cross-entropy of log-odds: `yes` scores should answer yes, `no` scores no (classes weighted equally)."""
    return 0.5 * (jnp.mean(optax.sigmoid_binary_cross_entropy(yes, jnp.ones_like(yes)))
                  + jnp.mean(optax.sigmoid_binary_cross_entropy(no, jnp.zeros_like(no))))


def bradley_terry_loss(winner: jax.Array, loser: jax.Array) -> jax.Array:
    """-log P(winner preferred) with P = sigmoid(score difference)."""
    return jnp.mean(-jax.nn.log_sigmoid(winner - loser))


def reward_loss(model: RewardModel, ex: dict, config) -> tuple[jax.Array, dict]:
    s_match, s_caption, s_image = view_scores(model, ex)
    total, metrics = 0.0, {}
    for head, (win, lose, extra_yes) in head_pairs(config.reward_model.heads, s_match, s_caption, s_image).items():
        yes = win if extra_yes is None else jnp.concatenate([win, extra_yes])
        bce = yes_no_loss(yes, lose)
        bt = bradley_terry_loss(win, lose)
        total = total + config.reward.bce_weight * bce + config.reward.bt_weight * bt
        metrics.update({f"{head}/bce": bce, f"{head}/bt": bt,
                        f"{head}/accuracy": 0.5 * (jnp.mean(yes > 0) + jnp.mean(lose < 0)),
                        f"{head}/pair_accuracy": jnp.mean(win > lose)})
    return total, metrics


def train_step(state: RewardState, batch: dict, rng: jax.Array, config) -> dict:
    ex = reward_examples(batch, rng, config)
    (loss, aux), grads = value_and_grad(lambda m, e: reward_loss(m, e, config), state.model, ex,
                                        config.optimizer.grad_accum_steps)
    state.optimizer.update(state.model, grads)
    return {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
            "nonfinite_streak": nonfinite_streak(state.optimizer), "nonfinite_total": total_nonfinite(state.optimizer)}


# --------------------------------------------------------------------------- agreement with a judge


def agreement_with_classifier(scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """How a reward (scores [N]) agrees with a judge's verdicts (correct [N] bool) on the same images.

    agreement: share of images where (score > 0) equals the verdict; auc: probability that a
    correct image outscores an incorrect one (ties count half).
    """
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, bool)
    out = {"agreement": float(np.mean((scores > 0) == correct)), "judge_accuracy": float(correct.mean())}
    if correct.any() and (~correct).any():
        pos, neg = scores[correct], scores[~correct]
        greater = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
        out["auc"] = float(greater)
    return out


# --------------------------------------------------------------------------- loading for other stages


def validate_config(config) -> None:
    check_data(config)


STAGE = Stage(init=init, train_step=train_step, validate_config=validate_config)
