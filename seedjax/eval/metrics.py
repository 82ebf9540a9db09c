"""Digit-generation metrics: prompt accuracy, Frechet distance in classifier space, diversity.

All of them judge images through the independent digit classifier (`seedjax.eval.judges.classifier`),
never through the model being evaluated. Images are [N, H, W, C] float in [-1, 1] (or uint8).
"""

from __future__ import annotations

import numpy as np

from seedjax.eval.judges.classifier import DigitClassifier, get_classifier
from seedjax.train.digit_encoder import digit_images


def prompt_accuracy(images, labels, classifier: DigitClassifier | None = None) -> float:
    """Fraction of images the classifier reads as the digit they were prompted with."""
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"prompt_accuracy: labels shape {labels.shape} does not match {len(images)} images")
    classifier = classifier or get_classifier()
    return float((classifier.predict(images) == labels).mean())


def per_class_accuracy(images, labels, classifier: DigitClassifier | None = None) -> np.ndarray:
    """Prompt accuracy per digit [10] (NaN for digits that were not prompted), e.g. for tail digits."""
    labels = np.asarray(labels)
    correct = (classifier or get_classifier()).predict(images) == labels
    return np.array([correct[labels == d].mean() if (labels == d).any() else np.nan for d in range(10)])


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] (float64).

    |mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^(1/2)), where the trace of the matrix
    square root is computed as sum(sqrt(eig(C_a^(1/2) C_b C_a^(1/2)))): that matrix is symmetric
    positive semi-definite, so symmetric eigendecompositions suffice (no complex sqrtm noise).
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: need two [N, D] arrays with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance: need at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    fd = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
    return float(max(fd, 0.0))


def classifier_fd(images, real_images, classifier: DigitClassifier | None = None) -> float:
    """Frechet distance between generated and real images in the classifier's feature space."""
    classifier = classifier or get_classifier()
    return frechet_distance(classifier.features(images), classifier.features(real_images))


def diversity(features, prompt_ids) -> float:
    """Mean pairwise L2 feature distance among samples of the same prompt, averaged over prompts.

    Prompts with a single sample are skipped; each prompt with two or more counts equally.
    A model that collapses to one image per prompt scores 0.
    """
    feats = np.asarray(features, np.float64)
    prompt_ids = np.asarray(prompt_ids)
    if feats.ndim != 2 or prompt_ids.shape != (len(feats),):
        raise ValueError(f"diversity: features {feats.shape} and prompt_ids {prompt_ids.shape} do not match")
    per_prompt = []
    for pid in np.unique(prompt_ids):
        group = feats[prompt_ids == pid]
        if len(group) < 2:
            continue
        dists = np.sqrt(np.maximum(((group[:, None, :] - group[None, :, :]) ** 2).sum(-1), 0.0))
        n = len(group)
        per_prompt.append(dists.sum() / (n * (n - 1)))
    if not per_prompt:
        raise ValueError("diversity: no prompt has two or more samples")
    return float(np.mean(per_prompt))


def evaluate_digits(images, labels, real_images=None, classifier: DigitClassifier | None = None) -> dict:
    """The standard report for `digits` samples: prompt accuracy, FD and diversity.

    `real_images` defaults to the held-out digits 'test' split (300 real digits). Diversity
    groups samples by their prompted digit.
    """
    classifier = classifier or get_classifier()
    if real_images is None:
        real_images, _ = digit_images("test", classifier.image_size)
    feats = classifier.features(images)
    labels = np.asarray(labels)
    return {
        "prompt_accuracy": prompt_accuracy(images, labels, classifier),
        "fd": frechet_distance(feats, classifier.features(real_images)),
        "diversity": diversity(feats, labels),
    }
