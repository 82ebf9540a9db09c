"""Digit classifier and the metrics built on it, against independent references."""

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
from safetensors.numpy import load_file, save_file

from data_pipelines.sources import glyphs
from seedjax.eval.judges.classifier import get_classifier
from seedjax.eval.metrics import (
    classifier_fd,
    diversity,
    evaluate_digits,
    frechet_distance,
    per_class_accuracy,
    prompt_accuracy,
)
from seedjax.models import small_cnn
from seedjax.train.digit_encoder import digit_images


@pytest.fixture(scope="module")
def classifier():
    return get_classifier(32)


@pytest.fixture(scope="module")
def test_digits():
    return digit_images("test", 32)


# ----------------------------------------------------------------------------- Frechet distance


def _fd_with_sqrtm(a, b):
    """The textbook formula with scipy's general matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 8):
        a = rng.normal(size=(60, d)) @ rng.normal(size=(d, d))
        b = rng.normal(size=(45, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
        assert frechet_distance(a, b) == pytest.approx(_fd_with_sqrtm(a, b), rel=1e-8, abs=1e-9)


def _samples_with_exact_moments(rng, n, mean, cov):
    """n samples whose sample mean and (ddof=1) covariance equal `mean` and `cov` exactly."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_closed_form_for_known_gaussians():
    """FD(N(m1, a I), N(m2, R diag(l) R^T)) = |m1 - m2|^2 + d a + sum(l) - 2 sqrt(a) sum(sqrt(l))."""
    rng = np.random.default_rng(1)
    d, a = 4, 2.5
    lam = np.array([0.5, 1.0, 3.0, 7.0])
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    x = _samples_with_exact_moments(rng, 200, m1, a * np.eye(d))
    y = _samples_with_exact_moments(rng, 150, m2, rot @ np.diag(lam) @ rot.T)
    expected = np.sum((m1 - m2) ** 2) + d * a + lam.sum() - 2 * np.sqrt(a) * np.sqrt(lam).sum()
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(y, x) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# ----------------------------------------------------------------------------- diversity


def test_diversity_matches_hand_computation():
    feats = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0], [1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    prompts = np.array([0, 0, 0, 1, 1, 2])  # prompt 2 has one sample: skipped
    # prompt 0: distances 5, 8, 5 -> mean 6; prompt 1: collapsed -> 0.
    assert diversity(feats, prompts) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="two or more"):
        diversity(feats[:1], prompts[:1])
    with pytest.raises(ValueError, match="do not match"):
        diversity(feats, prompts[:3])


# ----------------------------------------------------------------------------- classifier


def test_classifier_held_out_accuracy(classifier, test_digits):
    images, labels = test_digits
    accuracy = prompt_accuracy(images, labels, classifier)
    print(f"digit classifier held-out accuracy at 32x32: {accuracy:.4f}")
    assert accuracy >= 0.95
    assert classifier.test_accuracy == pytest.approx(accuracy)
    assert prompt_accuracy(images, (labels + 1) % 10, classifier) < 0.05
    per_class = per_class_accuracy(images, labels, classifier)
    assert per_class.shape == (10,) and np.nanmin(per_class) >= 0.85


def test_classifier_accepts_rgb_other_sizes_and_uint8(classifier, test_digits):
    _, labels = test_digits
    raw, _ = glyphs.load_digits("test")
    big = glyphs.upsample(raw, 64)  # [N, 64, 64] in [0, 1]
    tint = np.array([0.9, 0.2, 0.8])  # purple ink on a dark background, like a scene
    rgb = (0.05 + big[..., None] * tint) * 2 - 1
    assert prompt_accuracy(rgb, labels, classifier) >= 0.95
    as_uint8 = np.round((rgb + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(classifier.predict(as_uint8), classifier.predict(rgb))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        classifier.predict(np.zeros((2, 32, 32, 2)))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        classifier.predict(np.zeros((32, 32)))


def test_classifier_is_robust_to_generator_like_distortions(classifier, test_digits):
    images, labels = test_digits
    rng = np.random.default_rng(0)
    blurred = scipy.ndimage.gaussian_filter(images, sigma=(0, 0.8, 0.8, 0))
    shifted = np.roll(blurred, (2, -2), axis=(1, 2))
    noisy = np.clip(shifted + rng.normal(0, 0.1, shifted.shape), -1, 1)
    dim = (noisy + 1) * 0.6 - 1  # low contrast
    assert prompt_accuracy(dim, labels, classifier) >= 0.9


def test_classifier_fd_orders_distributions(classifier, test_digits):
    test_images, test_labels = test_digits
    train_images, _ = digit_images("train", 32)
    rng = np.random.default_rng(0)
    real = classifier_fd(test_images, train_images, classifier)
    ones_only = classifier_fd(test_images[test_labels == 1], train_images, classifier)
    noise = classifier_fd(rng.uniform(-1, 1, test_images.shape), train_images, classifier)
    print(f"FD test vs train digits {real:.3f}, only ones {ones_only:.3f}, noise {noise:.3f}")
    assert real < 0.1 * ones_only and real < 0.1 * noise
    feats = classifier.features(test_images)
    assert feats.shape == (len(test_images), 64)
    report = evaluate_digits(test_images, test_labels, classifier=classifier)
    assert report["prompt_accuracy"] >= 0.95 and report["fd"] == pytest.approx(0.0, abs=1e-6)
    assert report["diversity"] > 0


def test_shipped_judges_load_without_training_and_each_file_is_its_settings(tmp_path, monkeypatch):
    """The judges shipped configs use load from seedjax/models/small_cnn_weights: a fresh machine
    (and CI) trains none. Changing one's settings or code version fails here until
    `python -m seedjax.tools.ship_judges` has shipped the new weights."""
    import json

    from safetensors import safe_open

    from seedjax.eval.judges import stamps
    from seedjax.tools import ship_judges
    from seedjax.train import digit_encoder

    monkeypatch.setenv("SEEDJAX_CACHE", str(tmp_path))
    for module in (digit_encoder, stamps):
        monkeypatch.setattr(module, "_train", lambda *a: pytest.fail(f"{module.__name__} trained a shipped judge"))
    for name, settings in ship_judges.SHIPPED_JUDGES:
        metadata = ship_judges.load(name, settings)
        accuracy = metadata.get("test_accuracy", metadata.get("any_recall"))
        assert float(accuracy) > 0.95, (name, settings, metadata)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing cached
    shipped = sorted(small_cnn.SHIPPED.rglob("*.safetensors"))
    assert len(shipped) == len(ship_judges.SHIPPED_JUDGES)  # no stale file ships
    for path in shipped:
        with safe_open(str(path), "np") as f:
            settings = json.loads(f.metadata()["settings"])
        assert small_cnn.settings_key(settings) == path.stem and settings["model"] == path.parent.name


def test_training_is_deterministic_and_cached(tmp_path, monkeypatch):
    """Same settings -> bitwise-equal weights (two fresh trainings); a reload gives the same model;
    a cache file that does not fit the model is refused with its path in the message."""
    weights, paths = [], []
    for run in ("a", "b"):
        monkeypatch.setenv("SEEDJAX_CACHE", str(tmp_path / run))
        clf = get_classifier.__wrapped__(32, steps=5, batch_size=16)
        files = list((tmp_path / run / "digit_classifier").glob("*.safetensors"))
        assert len(files) == 1
        paths.append(files[0])
        weights.append(load_file(str(files[0])))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
    images, _ = digit_images("test", 32)
    reloaded = get_classifier.__wrapped__(32, steps=5, batch_size=16)  # from tmp_path/b's cache
    np.testing.assert_array_equal(reloaded.logits(images[:50]), clf.logits(images[:50]))
    assert reloaded.metadata["test_accuracy"] == clf.metadata["test_accuracy"]

    tensors = dict(weights[1])
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(paths[1]))
    with pytest.raises(ValueError, match="do not match the model"):
        get_classifier.__wrapped__(32, steps=5, batch_size=16)
    assert small_cnn.settings_key({"a": 1}) != small_cnn.settings_key({"a": 2})
