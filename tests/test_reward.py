"""Reward model: perturbed-caption data, image degradations, the loss, Bradley-Terry ordering."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import data_pipelines
from data_pipelines.core.tokenizer import tokenize
from data_pipelines.sources import digits as digits_lib
from data_pipelines.sources import reward_pairs, scenes
from data_pipelines.techniques.curation import image_statistics
from seedjax.models.reward import RewardModel
from seedjax.schema.models import reward_model_config
from seedjax.schema.stages import reward_config
from seedjax.stages import reward


def scene_raw(template: int = 0) -> dict:
    digit = np.array([3, 7, -1], np.int32)
    color = np.array([0, 4, -1], np.int32)  # red, blue
    box = np.array([[0.3, 0.05, 0.6, 0.35], [0.3, 0.6, 0.6, 0.9], [0, 0, 0, 0]], np.float32)
    caption = scenes.caption_for_labels(digit, color, 2, box, template)
    return {"scene_digit": digit, "scene_color": color, "scene_box": box, "scene_count": np.int32(2),
            "caption": caption}


def test_scene_caption_perturbations_contradict_one_attribute():
    assert scene_raw()["caption"] == "a red 3 left of a blue 7"
    obj = r"a (\w+) (\d) left of a (\w+) (\d)"
    for seed in range(20):
        rng = np.random.default_rng(seed)
        got = re.fullmatch(obj, reward_pairs.perturb_scene_caption(scene_raw(), "digit", rng)).groups()
        assert (got[0], got[2]) == ("red", "blue") and ((got[1] != "3") + (got[3] != "7")) == 1
        got = re.fullmatch(obj, reward_pairs.perturb_scene_caption(scene_raw(), "color", rng)).groups()
        assert (got[1], got[3]) == ("3", "7") and ((got[0] != "red") + (got[2] != "blue")) == 1
        assert got[0] in scenes.COLOR_NAMES and got[2] in scenes.COLOR_NAMES
        count = reward_pairs.perturb_scene_caption(scene_raw(), "count", rng)
        assert count == "a red 3" or re.fullmatch(r"a red 3 left of a blue 7, and a \w+ \d", count), count
    rng = np.random.default_rng(0)
    assert reward_pairs.perturb_scene_caption(scene_raw(), "position", rng) == "a red 3 right of a blue 7"
    # The phrasing template of the true caption is kept.
    assert reward_pairs.perturb_scene_caption(scene_raw(1), "position", rng) == "two digits: a red 3 right of a blue 7"


def test_digit_caption_perturbation_keeps_the_template():
    for variant in range(len(digits_lib.CAPTION_TEMPLATES)):
        raw = {"label": 4, "caption": digits_lib.caption_for(4, variant)}
        negative = reward_pairs.perturb_digit_caption(raw, np.random.default_rng(variant))
        assert negative in {digits_lib.caption_for(d, variant) for d in range(10) if d != 4}


def test_reward_pairs_batches_carry_negative_captions():
    cfg = data_pipelines.default_config()
    cfg.source, cfg.path = "reward_pairs", "digit_scenes"
    cfg.max_text_len = 64
    it = data_pipelines.make_train_iterator(cfg, global_batch_size=16, seed=3, process_index=0, process_count=1)
    batch = next(it)
    assert (batch["negative_tokens"] != batch["tokens"]).any(axis=1).all()
    kinds = batch["tags"][:, -8:]  # sorted vocabulary: perturb:* then relation:* at the end
    assert kinds[:, :4].sum(1).tolist() == [1] * 16
    again = next(data_pipelines.make_train_iterator(cfg, global_batch_size=16, seed=3, process_index=0,
                                                    process_count=1))
    np.testing.assert_array_equal(again["negative_tokens"], batch["negative_tokens"])  # deterministic
    cfg.path = "folder"
    with pytest.raises(ValueError, match="reward_pairs pairs captions of a labelled bundled source"):
        data_pipelines.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0, process_count=1)


def test_degradations_do_what_they_say():
    batch = data_pipelines.make_eval_batch(data_pipelines.default_config(), num=8, seed=0)
    images = jnp.asarray(batch["image"])
    clean = image_statistics(np.asarray(images + 1) / 2)
    degrade = jax.jit(reward.degrade, static_argnums=2)
    for kind in reward.DEGRADATIONS:
        out, kinds = degrade(images, jax.random.key(1), (kind,))
        out = np.asarray(out)
        assert (np.asarray(kinds) == reward.DEGRADATIONS.index(kind)).all()
        changed = np.abs(out - np.asarray(images)).max(-1) > 1e-4
        assert changed.any(axis=(1, 2)).all(), kind
        stats = image_statistics((out + 1) / 2)
        if kind == "blur":
            assert (stats["sharpness"] < clean["sharpness"]).all()
        if kind == "noise":
            assert changed.mean() > 0.4  # (pixels at -1 stay there when the noise is negative)
        if kind in ("stamp", "mosaic"):  # only inside one box
            for c in changed:
                rows, cols = np.flatnonzero(c.any(1)), np.flatnonzero(c.any(0))
                assert c[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].mean() > (0.2 if kind == "stamp" else 0.05)
                assert c.mean() < 0.5
    with pytest.raises(ValueError, match="reward.degradations"):
        reward.degrade(images, jax.random.key(0), ("jpeg",))


def tiny_reward_config(**overrides) -> ml_collections.ConfigDict:
    cfg = reward_model_config()
    cfg.update(dict(image_size=16, channels=1, patch_size=4, stem_channels=4, width=32, depth=1, num_heads=2,
                    max_text_len=16))
    cfg.update(overrides)
    return cfg


def test_reward_loss_matches_a_float64_reference():
    model = RewardModel(tiny_reward_config(), nnx.Rngs(0))
    rng = np.random.default_rng(0)
    b = 6
    tokens, mask = tokenize([f"digit {i}" for i in range(b)], 16)
    neg_tokens, neg_mask = tokenize([f"the number {i + 1}" for i in range(b)], 16)
    ex = {"images": jnp.asarray(rng.uniform(-1, 1, (b, 16, 16, 1)), jnp.float32),
          "degraded": jnp.asarray(rng.uniform(-1, 1, (b, 16, 16, 1)), jnp.float32),
          "tokens": tokens, "text_mask": mask, "negative_tokens": neg_tokens, "negative_text_mask": neg_mask}
    config = ml_collections.ConfigDict(dict(reward_model=tiny_reward_config(), reward=reward_config(
        bce_weight=0.7, bt_weight=1.3)))
    total, metrics = nnx.jit(lambda m, e: reward.reward_loss(m, e, config))(model, ex)

    # Scores of each view, one view at a time (checks the batched pass keeps rows apart).
    score = nnx.jit(lambda m, *args: m.score(*args))
    s_m = np.asarray(score(model, ex["images"], tokens, mask), np.float64)
    s_c = np.asarray(score(model, ex["images"], neg_tokens, neg_mask), np.float64)
    s_i = np.asarray(score(model, ex["degraded"], tokens, mask), np.float64)
    softplus = lambda x: np.logaddexp(0.0, x)
    bce_a = 0.5 * (softplus(-s_m[:, 0]).mean() + softplus(s_c[:, 0]).mean())
    bt_a = softplus(-(s_m[:, 0] - s_c[:, 0])).mean()
    bce_q = 0.5 * (softplus(-np.concatenate([s_m[:, 1], s_c[:, 1]])).mean() + softplus(s_i[:, 1]).mean())
    bt_q = softplus(-(s_m[:, 1] - s_i[:, 1])).mean()
    expected = 0.7 * (bce_a + bce_q) + 1.3 * (bt_a + bt_q)
    assert float(total) == pytest.approx(expected, rel=1e-4)
    assert float(metrics["alignment/bt"]) == pytest.approx(bt_a, rel=1e-4)
    assert float(metrics["quality/bce"]) == pytest.approx(bce_q, rel=1e-4)


def test_bradley_terry_training_recovers_the_preference_order():
    """Pairs of blobs: the brighter one is preferred. BT alone must learn a monotone score."""
    cfg = tiny_reward_config(heads=("quality",))
    model = RewardModel(cfg, nnx.Rngs(0))
    yy, xx = np.mgrid[:16, :16]
    blob = np.exp(-((yy - 7.5) ** 2 + (xx - 7.5) ** 2) / 18.0)[None, :, :, None].astype(np.float32)
    tokens, mask = tokenize(["a picture"], 16)
    images_of = lambda b: jnp.asarray(blob) * b[:, None, None, None] * 2 - 1
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    tok, msk = jnp.repeat(tokens, 32, 0), jnp.repeat(mask, 32, 0)

    @jax.jit
    def train(state):
        def step(i, carry):
            state, losses = carry
            model, optimizer = nnx.merge(graphdef, state)
            b = jax.random.uniform(jax.random.key(i), (2, 32), minval=0.1, maxval=1.0)
            win, lose = images_of(b.max(0)), images_of(b.min(0))
            loss_fn = lambda m: reward.bradley_terry_loss(m.score(win, tok, msk)[:, 0], m.score(lose, tok, msk)[:, 0])
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return nnx.state((model, optimizer)), losses.at[i].set(loss)

        return jax.lax.fori_loop(0, 150, step, (state, jnp.zeros(150)))

    state, losses = train(state)
    model, _ = nnx.merge(graphdef, state)
    losses = np.asarray(losses)
    assert np.mean(losses[-10:]) < 0.6 * losses[0]
    grid = np.linspace(0.12, 0.98, 40, dtype=np.float32)
    scores = np.asarray(nnx.jit(lambda m, x: m.score(x, jnp.repeat(tokens, 40, 0), jnp.repeat(mask, 40, 0)))(
        model, images_of(jnp.asarray(grid)))[:, 0])
    ranks = np.argsort(np.argsort(scores))
    spearman = np.corrcoef(ranks, np.arange(40))[0, 1]
    assert spearman > 0.95
    pairs = np.random.default_rng(1).integers(0, 40, (500, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    assert np.mean((scores[pairs[:, 0]] > scores[pairs[:, 1]]) == (pairs[:, 0] > pairs[:, 1])) > 0.9


def test_agreement_with_classifier_reference():
    scores = np.array([2.0, -1.0, 0.5, -3.0, 1.0])
    correct = np.array([True, False, False, False, True])
    out = reward.agreement_with_classifier(scores, correct)
    assert out["agreement"] == pytest.approx(4 / 5)
    assert out["auc"] == pytest.approx(1.0)  # every correct image outscores every incorrect one
    assert reward.agreement_with_classifier(-scores, correct)["auc"] == pytest.approx(0.0)


def test_reward_stage_checks_its_data(tmp_path):
    from seedjax.config import load_config

    config = load_config("experiments/quickstart/reward.py:tiny")
    reward.validate_config(config)
    for key, value, message in [("data.source", "digits", "must be 'reward_pairs'"),
                                ("reward_model.channels", 3, "reward_model.channels=3"),
                                ("reward_model.heads", ("alignment", "style"), "unknown head 'style'")]:
        bad = load_config("experiments/quickstart/reward.py:tiny")
        with bad.unlocked():
            node, leaf = bad, key.split(".")
            for part in leaf[:-1]:
                node = node[part]
            node[leaf[-1]] = value
        with pytest.raises(ValueError, match=re.escape(message)):
            reward.validate_config(bad)
