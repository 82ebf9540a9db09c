"""Token geometry: image, video and packed layouts against independent references."""

import jax
import numpy as np
import pytest

from seedjax.models import rope
from seedjax.models.geometry import Geometry, PackedGeometry


def reference_tokens(x: np.ndarray, pt: int, p: int) -> np.ndarray:
    """Loop reference: token (t, i, j) holds x[t*pt:(t+1)*pt, i*p:(i+1)*p, j*p:(j+1)*p, :] ordered (c, pt, ph, pw)."""
    b, f, h, w, c = x.shape
    out = []
    for t in range(f // pt):
        for i in range(h // p):
            for j in range(w // p):
                patch = x[:, t * pt:(t + 1) * pt, i * p:(i + 1) * p, j * p:(j + 1) * p, :]  # [B, pt, p, p, C]
                out.append(patch.transpose(0, 4, 1, 2, 3).reshape(b, -1))
    return np.stack(out, axis=1)


def test_image_geometry_is_flux_packing_and_its_rope_ids():
    g = Geometry.image(8, 12, 3, 4)
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    tokens = np.asarray(g.tokens(x))
    np.testing.assert_array_equal(tokens, reference_tokens(x[:, None], 1, 4))
    assert g.token_shape == (6, 48) and g.grid == (1, 2, 3) and g.grid_hw == (2, 3)
    np.testing.assert_array_equal(np.asarray(g.frames_of(tokens))[:, 0], x)
    np.testing.assert_array_equal(np.asarray(g.images_of(tokens)), x)
    np.testing.assert_array_equal(g.position_ids(), rope.image_position_ids(2, 3))


def test_video_geometry_round_trips_with_temporal_patches():
    g = Geometry.video(4, 8, 8, 2, patch=4, temporal_patch=2)
    x = np.random.default_rng(1).normal(size=(3, 4, 8, 8, 2)).astype(np.float32)
    tokens = np.asarray(g.tokens(x))
    assert tokens.shape == (3, 2 * 2 * 2, 2 * 2 * 16) == (3, g.num_tokens, g.token_dim)
    np.testing.assert_array_equal(tokens, reference_tokens(x, 2, 4))
    np.testing.assert_array_equal(np.asarray(g.frames_of(tokens)), x)
    ids = g.position_ids()
    assert ids.shape == (8, 3) and ids[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # frames lead the token order
    assert g.noise(jax.random.key(0), 5).shape == (5, 8, 64)
    with pytest.raises(ValueError, match="one image"):
        g.images_of(tokens)


def test_packed_geometry_puts_references_after_the_target():
    target, ref = Geometry.image(8, 8, 1, 4), Geometry.image(4, 8, 1, 4)
    packed = PackedGeometry(target, (ref, ref))
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(2, *g.shape[1:])).astype(np.float32) for g in packed.parts]
    tokens = packed.tokens(xs[0], tuple(xs[1:]))
    assert tokens.shape == (2, 4 + 2 + 2, 16) and packed.num_tokens == 8
    for g, x, part in zip(packed.parts, xs, packed.split(tokens)):
        np.testing.assert_array_equal(np.asarray(part), np.asarray(g.tokens(x)))
    assert packed.target_mask().tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert packed.position_ids()[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    # By hand: target rows/cols 0..1 x 0..1, each reference 1 x 2 at rows 0, cols 0..1.
    rows_cols = [[0, 0], [0, 1], [1, 0], [1, 1], [0, 0], [0, 1], [0, 0], [0, 1]]
    np.testing.assert_array_equal(packed.position_ids("per_reference")[:, 1:], rows_cols)
    kontext = packed.position_ids("kontext")
    assert kontext[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # every reference at 1 (FLUX.1 Kontext)
    np.testing.assert_array_equal(kontext[:, 1:], rows_cols)
    with pytest.raises(ValueError, match="reference RoPE scheme"):
        packed.position_ids("flux")
    with pytest.raises(ValueError, match="token width"):
        PackedGeometry(target, (Geometry.image(8, 8, 3, 4),))


def test_bad_geometries_fail_clearly():
    with pytest.raises(ValueError, match="does not divide"):
        Geometry.image(10, 8, 1, 4)
    with pytest.raises(ValueError, match="temporal patch"):
        Geometry.video(3, 8, 8, 1, 4, temporal_patch=2)
    with pytest.raises(ValueError, match=r"not \[B, 1, 8, 8, 1\]"):
        Geometry.image(8, 8, 1, 4).tokens(np.zeros((1, 8, 8, 3), np.float32))


def test_the_image_generator_refuses_a_video_geometry():
    from flax import nnx

    from seedjax.config import load_config
    from seedjax.models.generator import DiffusionModel

    cfg = load_config("experiments/quickstart/pretrain.py:tiny")
    model = nnx.eval_shape(lambda: DiffusionModel(cfg, nnx.Rngs(0)))
    with pytest.raises(ValueError, match="video DiT"):
        model(np.zeros((1, 8, 16)), np.zeros((1,)), {}, Geometry.video(2, 8, 8, 1, 4))
