"""Checks of `seedjax.inference.load` shared by the end-to-end tests (on their own runs)."""

from __future__ import annotations

import contextlib

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from seedjax.train.checkpoint import load_state_tree


@contextlib.contextmanager
def training_state_forbidden():
    """Fail on any construction of what only training needs: optimizers, EMAs, discriminators,
    fake scores, reward models, REPA heads."""
    from seedjax.distill import discriminator, dmd
    from seedjax.models import discriminators, reward
    from seedjax.train import repa
    from seedjax.train import state

    forbidden = [(nnx.Optimizer, "__init__"), (state.EMA, "__init__"), (discriminator.Discriminator, "__init__"),
                 (dmd.FakeScore, "__init__"), (discriminators.PatchDiscriminator, "__init__"),
                 (reward.RewardModel, "__init__"), (repa.RepaHead, "__init__")]
    saved = [(cls, name, cls.__dict__[name]) for cls, name in forbidden]

    def refuse(cls):
        def init(self, *args, **kwargs):
            raise AssertionError(f"the inference bundle built a {cls.__name__}")
        return init

    try:
        for cls, name, _ in saved:
            setattr(cls, name, refuse(cls))
        yield
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)


def assert_bundle_loads(path: str):
    """Load the generator of `path` with every training-only module forbidden; return the bundle."""
    from seedjax import inference

    with training_state_forbidden():
        bundle = inference.load(path)
    assert bundle.entry == ("ema" if bundle.config.get("ema_decay", 0) > 0 else "model")
    assert bundle.nfe == bundle.sampler.nfe >= 1
    # The parameters are the checkpoint's, bit for bit (read here the old way: the whole state).
    saved = load_state_tree(path)
    saved = saved["ema"]["params"] if bundle.entry == "ema" else saved["model"]
    loaded = nnx.to_pure_dict(nnx.state(bundle.model, nnx.Param))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, loaded), jax.tree.map(np.asarray, saved))
    return bundle


def assert_no_generator(path: str) -> None:
    """A run without a text-to-image generator (VAE, reward model) is a clear BundleError."""
    from seedjax import inference
    from seedjax.inference.bundle import BundleError

    with pytest.raises(BundleError, match="no text-to-image generator"):
        inference.load(path)
