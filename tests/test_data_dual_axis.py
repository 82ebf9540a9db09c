"""Dual-axis sampling on a constructed dataset whose visual and text clusters are known."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

import data_pipelines as dp
from data_pipelines.cli import report
from data_pipelines.core import pipeline
from data_pipelines.core.tokenizer import detokenize
from data_pipelines.techniques import dual_axis
from seedjax.eval.judges.classifier import digit_features

COLORS = {"A": (230, 30, 30), "B": (30, 200, 40), "C": (40, 60, 240)}
CAPTIONS = {"x": "a photo of a cat on a sofa", "y": "a drawing of a boat at sea"}
# (visual cluster, text cluster) -> number of images: a skewed joint distribution.
JOINT = {("A", "x"): 60, ("A", "y"): 20, ("B", "x"): 15, ("C", "y"): 5}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dual")
    rng = np.random.default_rng(0)
    truth = []
    i = 0
    for (color, text), n in JOINT.items():
        for _ in range(n):
            arr = np.clip(np.array(COLORS[color]) + rng.integers(-12, 13, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"{i:03d}.png")
            (root / f"{i:03d}.txt").write_text(f"{CAPTIONS[text]} number {i}")
            truth.append((color, text))
            i += 1
    return root, truth


def _cfg(root, **dual):
    cfg = dp.default_config()
    cfg.source, cfg.path, cfg.image_size = "folder", str(root), 16
    cfg.dual_axis.update(dict(enabled=True, coarse_clusters=3, fine_clusters=1, text_clusters=2, alpha=1.0))
    cfg.dual_axis.update(dual)
    return cfg


def test_clusters_are_recovered_and_weights_follow_joint_counts(folder):
    root, truth = folder
    cfg = _cfg(root, alpha=0.5)
    source = pipeline.open_source("folder", str(root), cfg, split="train", seed=0)
    a = dual_axis.analyse(source, cfg, seed=0)
    colors = [c for c, _ in truth]
    texts = [t for _, t in truth]
    assert adjusted_rand_score(colors, a.coarse) == 1.0
    assert adjusted_rand_score(colors, a.visual) == 1.0  # one fine cluster per coarse one
    assert adjusted_rand_score(texts, a.text) == 1.0
    counts = np.array([JOINT[key] for key in truth], np.float64)
    expected = counts**-0.5
    np.testing.assert_allclose(a.weights, expected / expected.mean(), rtol=1e-12)
    # Same seed, same clusters and weights (what every process and every restart relies on).
    again = dual_axis.analyse(source, cfg, seed=0)
    np.testing.assert_array_equal(again.weights, a.weights)


def test_hierarchical_fine_clusters_split_within_coarse_ones():
    rng = np.random.default_rng(1)
    centers = {(0, 0): [0, 0], (0, 1): [0, 3], (1, 0): [40, 0], (1, 1): [40, 3]}
    feats = np.concatenate([np.array(c) + 0.1 * rng.normal(size=(30, 2)) for c in centers.values()])
    truth_coarse = np.repeat([0, 0, 1, 1], 30)
    truth_fine = np.repeat([0, 1, 2, 3], 30)
    coarse, fine = dual_axis.two_level_kmeans(feats, 2, 2, seed=0)
    assert adjusted_rand_score(truth_coarse, coarse) == 1.0
    assert adjusted_rand_score(truth_fine, fine) == 1.0
    assert np.all(fine // 2 == coarse)  # fine ids are numbered inside their coarse cluster


def _joint_of(batch, truth_by_caption):
    return [truth_by_caption[int(c.rsplit(" ", 1)[1])] for c in detokenize(batch["tokens"])]


def test_sampling_balances_the_joint_distribution_deterministically(folder):
    root, truth = folder
    make = lambda cfg: dp.make_train_iterator(cfg, global_batch_size=50, seed=0, process_index=0, process_count=1)
    counts = {key: 0 for key in JOINT}
    it = make(_cfg(root, alpha=1.0))
    batches = [next(it) for _ in range(40)]
    for batch in batches:
        for key in _joint_of(batch, truth):
            counts[key] += 1
    shares = np.array(list(counts.values())) / 2000
    np.testing.assert_allclose(shares, 0.25, atol=0.04)  # alpha = 1: every joint cluster equally likely
    baseline = {key: 0 for key in JOINT}
    it0 = make(_cfg(root, enabled=False))
    for _ in range(40):
        for key in _joint_of(next(it0), truth):
            baseline[key] += 1
    assert baseline[("C", "y")] == 5 * 20 and baseline[("A", "x")] == 60 * 20  # uniform epochs: data frequencies
    # Deterministic given the seed, and resumable mid-epoch.
    again = make(_cfg(root, alpha=1.0))
    first = [next(again) for _ in range(3)]
    state = json.loads(json.dumps(again.get_state()))
    assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, batches))
    resumed = make(_cfg(root, alpha=1.0))
    resumed.set_state(state)
    for expected in batches[3:8]:
        np.testing.assert_array_equal(next(resumed)["image"], expected["image"])


def test_report_prints_clusters_and_writes_png_and_weights(folder, tmp_path, capsys):
    root, truth = folder
    png, weights = tmp_path / "r.png", tmp_path / "w.npy"
    args = ["--source=folder", f"--path={root}", f"--png={png}", f"--weights_out={weights}",
            "--data.dual_axis.coarse_clusters=3", "--data.dual_axis.fine_clusters=1",
            "--data.dual_axis.text_clusters=2", "--data.dual_axis.alpha=1.0", "--data.image_size=16"]
    assert report.main(args) == 0
    out = capsys.readouterr().out
    assert "visual coarse clusters (3): " in out and "joint (visual, text) clusters: 4" in out
    assert "text clusters (2): [75, 25]" in out
    line = next(line for line in out.splitlines() if line.startswith("effective number of clusters"))
    before, after = map(float, line.split()[-2:])
    assert after == pytest.approx(4.0) and before < 3.0
    assert Image.open(png).size[0] == 900
    # The weights file drives the pipeline exactly like computing them in place.
    w = np.load(weights)
    assert w.shape == (100,)
    cfg_file = _cfg(root, weights_file=str(weights))
    a = next(dp.make_train_iterator(cfg_file, global_batch_size=20, seed=3, process_index=0, process_count=1))
    b = next(dp.make_train_iterator(_cfg(root), global_batch_size=20, seed=3, process_index=0, process_count=1))
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.save(tmp_path / "short.npy", w[:10])
    with pytest.raises(ValueError, match="10 weights for 100 samples"):
        dp.make_train_iterator(_cfg(root, weights_file=str(tmp_path / "short.npy")), global_batch_size=20, seed=3,
                               process_index=0, process_count=1)
    assert report.main(["--source=folder", f"--path={root}", "--data.nope=1"]) == 2


def test_classifier_features_cluster_digits_by_class():
    cfg = dp.default_config()
    cfg.dual_axis.update(dict(visual_features="classifier", coarse_clusters=10, fine_clusters=1, text_clusters=10))
    source = pipeline.open_source("digits", "", cfg, split="test", seed=0)
    a = dual_axis.analyse(source, cfg, seed=0, classifier_features=digit_features)
    assert adjusted_rand_score(source.labels, a.coarse) > 0.6  # the classifier's features know digits
    pixels = dual_axis.analyse(source, dict_update(cfg, visual_features="pixels"), seed=0)
    assert adjusted_rand_score(source.labels, a.coarse) > adjusted_rand_score(source.labels, pixels.coarse)
    with pytest.raises(ValueError, match="needs the digit classifier's features"):  # data_pipelines has no classifier
        dual_axis.visual_features("classifier", np.zeros((2, 32, 32, 1), np.float32), False, seed=0)


def dict_update(cfg, **dual):
    out = cfg.copy_and_resolve_references()
    out.dual_axis.update(dual)
    return out


def test_latent_features_from_latent_shards(tmp_path):
    from data_pipelines.core import shards

    rng = np.random.default_rng(0)
    writer = shards.ShardWriter(str(tmp_path), 1)
    for i in range(60):
        center = (i % 3) * 5.0  # three well separated latent clusters
        writer.write({"latent": (center + rng.normal(size=(8, 8, 4))).astype(np.float32), "target_size": [64, 64],
                      "caption": f"sample {i}"}, (8, 8))
    writer.close({"kind": "latents", "source": "test", "channels": 3, "shapes": {"latent": [-1, -1, 4]}})
    cfg = dp.default_config()
    cfg.source, cfg.path = "shards", str(tmp_path)
    cfg.dual_axis.update(dict(visual_features="latents", coarse_clusters=3, fine_clusters=1, text_clusters=2))
    source = pipeline.open_source("shards", str(tmp_path), cfg, split="train", seed=0)
    a = dual_axis.analyse(source, cfg, seed=0)
    assert adjusted_rand_score(np.arange(60) % 3, a.coarse) == 1.0
    with pytest.raises(ValueError, match="'latents' needs a latent shard source"):
        dual_axis.analyse(pipeline.open_source("digits", "", cfg, split="test", seed=0), cfg, seed=0)
