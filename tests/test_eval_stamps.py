"""Stamp detector: precision and recall on held-out scenes, robustness, the on-device mosaic."""

import jax
import numpy as np
import pytest
import scipy.ndimage

from data_pipelines.sources.scenes import DEFECT_KINDS, MOSAIC_BLOCK
from seedjax.eval.judges.stamps import add_mosaic, detect_stamps, get_stamp_detector, labelled_scenes, precision_recall

HELD_OUT_SEED = 424242  # neither the training seed nor the one in the cached report


@pytest.fixture(scope="module")
def held_out():
    return labelled_scenes(400, "test", HELD_OUT_SEED, 0.5)


def test_precision_and_recall_on_held_out_scenes(held_out):
    images, labels = held_out
    found = detect_stamps(images)
    assert set(found) == set(DEFECT_KINDS) | {"any"}
    assert all(v.dtype == bool and v.shape == (len(images),) for v in found.values())
    report = {}
    for k, kind in enumerate(DEFECT_KINDS + ("any",)):
        actual = labels.any(1) if kind == "any" else labels[:, k]
        report[kind] = precision_recall(found[kind], actual)
    print("held-out stamp detection (precision, recall):", {k: tuple(round(x, 3) for x in v) for k, v in report.items()})
    assert report["any"][0] >= 0.9 and report["any"][1] >= 0.9
    for kind in DEFECT_KINDS:
        assert report[kind][0] >= 0.85 and report[kind][1] >= 0.8, kind


def test_robust_to_generator_like_blur_and_noise(held_out):
    images, labels = held_out
    rng = np.random.default_rng(0)
    soft = scipy.ndimage.gaussian_filter(images / 127.5 - 1.0, sigma=(0, 0.5, 0.5, 0))
    soft = np.clip(soft + rng.normal(0, 0.02, soft.shape), -1, 1)
    found = detect_stamps(soft)["any"]
    stamped = labels.any(1)
    assert found[stamped].mean() >= 0.8  # recall
    assert found[~stamped].mean() <= 0.1  # false positive rate on clean scenes


def test_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        get_stamp_detector().detect(np.zeros((2, 64, 64, 1)))


def test_add_mosaic_pixelates_one_square_patch():
    images, _ = labelled_scenes(8, "train", 3, 0.0)
    x = images.astype(np.float32) / 255.0
    out = np.asarray(jax.jit(jax.vmap(add_mosaic))(x, jax.random.split(jax.random.key(0), len(x))))
    min_block = max(4, round(64 * MOSAIC_BLOCK[0]))
    for before, after in zip(x, out):
        changed = np.abs(after - before).max(-1) > 1e-6
        ys, xs = np.nonzero(changed)
        assert len(ys) > 0
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        patch = after[y0:y1, x0:x1]
        # Piecewise constant: along every row and column of the patch, values change only at block
        # borders, so runs of equal pixels are at least a block long (except a cut-off last block).
        for line in list(patch) + list(patch.transpose(1, 0, 2)):
            change = np.flatnonzero(np.abs(np.diff(line, axis=0)).max(-1) > 1e-6)
            runs = np.diff(np.concatenate([[-1], change]))
            assert (runs[1:] >= min_block - 1).all() if len(runs) > 1 else True
        # The pixelated blocks are means of the original pixels: total color is (nearly) preserved.
        np.testing.assert_allclose(patch.sum((0, 1)), before[y0:y1, x0:x1].sum((0, 1)), rtol=0.02, atol=0.5)
