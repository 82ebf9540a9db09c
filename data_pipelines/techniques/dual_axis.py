"""Seedream 3.0 dual-axis collaborative sampling: balance what images show and what captions say.

Visual axis: two-level k-means (coarse clusters, then fine clusters inside each) of image
features -- a fixed random projection of pixels, the digit classifier's features, or the
cached latents. Textual axis: k-means over TF-IDF vectors of the captions. Every sample gets
weight (size of its joint (fine visual, text) cluster) ** -alpha: alpha = 0 keeps the data
distribution, alpha = 1 makes every joint cluster equally likely. The streams then draw
samples with these weights (deterministic in the seed, resumable: see core/streams.py,
WeightedDraws). The digit classifier lives in seedjax, which this package does not import: its
features come in as `classifier_features` (seedjax's training loop and
`python -m data_pipelines.cli.report` pass them).

Clustering is single-threaded (threadpoolctl) so every process and every restart computes the
same weights; for large sources compute them once with `python -m data_pipelines.cli.report
--weights_out=FILE` and set `data.dual_axis.weights_file`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from data_pipelines.core import samples as samples_lib

log = logging.getLogger("data_pipelines")

FEATURE_SIZE = 16  # images are reduced to 16x16 before the pixel projection
PROJECTION_DIM = 64


@dataclasses.dataclass
class Analysis:
    """Per-sample clusters and weights of one source (valid = the sample loaded)."""

    valid: np.ndarray  # bool [N]
    coarse: np.ndarray  # int [N] visual coarse cluster (-1 if invalid)
    visual: np.ndarray  # int [N] visual fine cluster, globally numbered
    text: np.ndarray  # int [N] text cluster
    weights: np.ndarray  # float [N], mean 1 over valid samples, 0 for invalid ones
    captions: list[str]
    labels: dict[str, np.ndarray]  # 'label' [N] or 'scene_digit'/'scene_color' [N, 3] when the source has them


LABEL_KEYS = ("label", "scene_digit", "scene_color")


def _pooled_latent(latent: np.ndarray) -> np.ndarray:
    """A latent [h, w, c] average-pooled to a 4x4 grid, flattened (the 'latents' visual feature)."""
    rows = np.array_split(np.asarray(latent, np.float32), 4, axis=0)
    return np.stack([[cell.mean(axis=(0, 1)) for cell in np.array_split(row, 4, axis=1)] for row in rows]).reshape(-1)


def _load_all(source, image_size: int, channels: int):
    """Every sample once: valid [N], visual inputs (images [N, S, S, C] in [-1, 1], or pooled latents
    [N, 16 c] for latent sources; zeros where invalid), captions, labels."""
    n = len(source)
    inputs = None
    valid = np.zeros(n, bool)
    captions = [""] * n
    labels: dict[str, list] = {}
    for i in range(n):
        try:
            raw = source.load(i, 0)
            visual = (_pooled_latent(raw["latent"]) if source.latent else
                      samples_lib.fit_image_array(raw["image"], (image_size, image_size), channels)[0])
        except samples_lib.BadSample:
            continue
        if inputs is None:
            inputs = np.zeros((n, *visual.shape), np.float32)
        if visual.shape != inputs.shape[1:]:  # a latent of another shape: the pipeline skips it too
            continue
        inputs[i] = visual
        captions[i] = raw.get("caption", "")
        for key in LABEL_KEYS:
            if key in raw:
                labels.setdefault(key, [None] * n)[i] = np.asarray(raw[key])
        valid[i] = bool(captions[i].strip())
    stacked = {}
    for key, values in labels.items():
        fill = np.full_like(next(v for v in values if v is not None), -1)
        stacked[key] = np.stack([fill if v is None else v for v in values])
    return valid, inputs, captions, stacked


def visual_features(kind: str, inputs: np.ndarray, latent_source: bool, seed: int,
                    classifier_features=None) -> np.ndarray:
    """[N, D] features for the visual axis (see module doc) from `_load_all`'s visual inputs.

    `classifier_features`: images [N, 32, 32, C] in [-1, 1] -> features [N, D]; needed for
    kind 'classifier' only (seedjax.eval.judges.classifier: `get_classifier(32).features`)."""
    if kind not in ("pixels", "classifier", "latents"):
        raise ValueError(f"data.dual_axis.visual_features: {kind!r} is not pixels, classifier or latents")
    if (kind == "latents") != latent_source:
        raise ValueError(f"data.dual_axis.visual_features={kind!r}: 'latents' needs a latent shard source and "
                         "latent shards need 'latents'")
    if kind == "classifier":
        if classifier_features is None:
            raise ValueError("data.dual_axis.visual_features='classifier' needs the digit classifier's features "
                             "(classifier_features=...), which seedjax's training loop and "
                             "`python -m data_pipelines.cli.report` pass; this caller passed none")
        return classifier_features(inputs)
    if kind == "latents":
        return inputs
    flat = inputs.reshape(len(inputs), -1)
    projection = np.random.default_rng(seed).normal(size=(flat.shape[1], PROJECTION_DIM)) / np.sqrt(flat.shape[1])
    return flat @ projection


def _kmeans(x, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = max(1, min(k, x.shape[0]))
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)


def two_level_kmeans(features: np.ndarray, coarse_k: int, fine_k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(coarse ids, fine ids numbered coarse * fine_k + j) of hierarchical k-means."""
    coarse = _kmeans(features, coarse_k, seed)
    fine = np.zeros(len(features), np.int64)
    for c in np.unique(coarse):
        members = np.flatnonzero(coarse == c)
        fine[members] = c * fine_k + _kmeans(features[members], fine_k, seed)
    return coarse, fine


def text_clusters(captions: list[str], k: int, seed: int) -> np.ndarray:
    """k-means over TF-IDF vectors of the captions (single characters count: '3' is a word here)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b").fit_transform(captions)
    return _kmeans(tfidf, k, seed)


def balance_weights(visual: np.ndarray, text: np.ndarray, alpha: float) -> np.ndarray:
    """weight_i = count(joint cluster of i) ** -alpha, normalised to mean 1."""
    joint = visual.astype(np.int64) * (int(text.max()) + 1) + text
    _, inverse, counts = np.unique(joint, return_inverse=True, return_counts=True)
    w = counts[inverse].astype(np.float64) ** -float(alpha)
    return w / w.mean()


def analyse(source, data_cfg, seed: int, classifier_features=None) -> Analysis:
    """Cluster a source on both axes and weight its samples (`classifier_features`: see visual_features)."""
    from threadpoolctl import threadpool_limits

    cfg = data_cfg.dual_axis
    channels = data_cfg.channels if data_cfg.channels != -1 else source.channels
    size = 32 if cfg.visual_features == "classifier" else FEATURE_SIZE
    valid, inputs, captions, labels = _load_all(source, size, channels)
    if not valid.any():
        raise ValueError(f"{source.name}: no valid sample to cluster")
    feats = visual_features(cfg.visual_features, inputs, source.latent, seed, classifier_features)
    idx = np.flatnonzero(valid)
    with threadpool_limits(1):
        coarse_v, fine_v = two_level_kmeans(feats[idx], cfg.coarse_clusters, cfg.fine_clusters, seed)
        text_v = text_clusters([captions[i] for i in idx], cfg.text_clusters, seed)
    out = Analysis(valid=valid, coarse=np.full(len(valid), -1), visual=np.full(len(valid), -1),
                   text=np.full(len(valid), -1), weights=np.zeros(len(valid)), captions=captions, labels=labels)
    out.coarse[idx], out.visual[idx], out.text[idx] = coarse_v, fine_v, text_v
    out.weights[idx] = balance_weights(fine_v, text_v, cfg.alpha)
    return out


def weights_for(source, data_cfg, *, seed: int, classifier_features=None) -> np.ndarray:
    """Sampling weights [N] for a source: from `dual_axis.weights_file` if set, else computed."""
    path = data_cfg.dual_axis.weights_file
    if path:
        try:
            weights = np.load(path)
        except OSError as e:
            raise ValueError(f"data.dual_axis.weights_file: cannot read {path} ({e})") from None
        if weights.shape != (len(source),):
            raise ValueError(f"{path}: {weights.shape[0]} weights for {len(source)} samples of {source.name}")
        return weights
    log.info("data: dual-axis clustering of %s (%d samples)", source.name, len(source))
    return analyse(source, data_cfg, seed, classifier_features).weights
