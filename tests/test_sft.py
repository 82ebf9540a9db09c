"""SFT: curated subsets (filter expressions over sample metadata), resolution-balanced sampling,
and the stage reusing pretraining's step (not a copy of it)."""

import numpy as np
import pytest

import data_pipelines
from data_pipelines.sources.digits import DigitsSource
from data_pipelines.techniques.curation import SampleFilter, image_statistics, sample_metadata


def test_filter_expressions_evaluate_like_python():
    md = {"caption": "a red 3", "tags": ("count:1", "color:red"), "label": 3, "count": 1, "height": 32,
          "width": 48, "ink": 0.3, "contrast": 0.4, "sharpness": 0.1}
    cases = {
        "ink >= 0.25": True,
        "ink >= 0.25 and label != 3": False,
        "'color:red' in tags and not 'color:blue' in tags": True,
        "label in (1, 2, 3)": True,
        "0.2 < ink < 0.28": False,
        "min(height, width) >= 32 and max(height, width) / min(height, width) > 1.4": True,
        "abs(-label) == 3 or count > 2": True,
        "'red' in caption and len(caption) == 7": True,
    }
    for expression, expected in cases.items():
        assert SampleFilter(expression)(md) is expected, expression


@pytest.mark.parametrize("expression, fragment", [
    ("inkk > 0.3", "unknown field 'inkk'"),
    ("__import__('os').system('true')", "only min(), max(), abs() and len()"),
    ("caption.upper() == 'A'", "only min(), max(), abs() and len()"),
    ("caption.real == 1", "not allowed"),
    ("label >", "not a valid expression"),
    ("[x for x in tags]", "not allowed"),
])
def test_bad_filter_expressions_fail_when_parsed(expression, fragment):
    with pytest.raises(ValueError, match="data.filter") as err:
        SampleFilter(expression)
    assert fragment in str(err.value)


def test_image_statistics_against_direct_computation():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 10, 12, 3)).astype(np.float32)
    stats = image_statistics(images)
    glyph = images.max(-1).astype(np.float64)
    np.testing.assert_allclose(stats["ink"], glyph.mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(stats["contrast"], glyph.std((1, 2)), rtol=1e-5)
    lap = (glyph[:, :-2, 1:-1] + glyph[:, 2:, 1:-1] + glyph[:, 1:-1, :-2] + glyph[:, 1:-1, 2:] - 4 * glyph[:, 1:-1, 1:-1])
    np.testing.assert_allclose(stats["sharpness"], np.abs(lap).mean((1, 2)), rtol=1e-5)


def _iterator(data_cfg, batch_size=32, seed=0):
    return data_pipelines.make_train_iterator(data_cfg, global_batch_size=batch_size, seed=seed, process_index=0,
                                              process_count=1)


def test_filtered_training_data_holds_only_the_selected_samples():
    cfg = data_pipelines.default_config()
    cfg.filter = "ink >= 0.325"
    source = DigitsSource("train", cfg.image_size)
    ink = image_statistics(source.images[..., None])["ink"]
    expected = set(np.flatnonzero(ink >= 0.325))
    assert 0.2 < len(expected) / len(source) < 0.4
    it = _iterator(cfg)
    for _ in range(5):
        batch = next(it)
        # The pipeline's images are the source's images: bold ones only.
        assert image_statistics((batch["image"] + 1) / 2)["ink"].min() >= 0.325 - 1e-3
    cfg.filter = "label in (3, 5)"
    labels = np.concatenate([next(_iterator(cfg))["label"] for _ in range(2)])
    assert set(labels.tolist()) == {3, 5}
    cfg.filter = "ink > 5"
    with pytest.raises(ValueError, match="keeps none of the"):
        _iterator(cfg)


def test_balance_resolutions_draws_every_bucket_equally(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(32, 32)] * 30 + [(32, 64)] * 10):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}")
    cfg = data_pipelines.default_config()
    cfg.source, cfg.path, cfg.buckets = "folder", str(tmp_path), "32x32,32x64"

    def wide_share(balanced: bool) -> float:
        cfg.balance_resolutions = balanced
        it = _iterator(cfg, batch_size=2)
        return float(np.mean([next(it)["image"].shape[2] == 64 for _ in range(400)]))

    assert abs(wide_share(False) - 0.25) < 0.06  # proportional to the counts (10 of 40)
    assert abs(wide_share(True) - 0.5) < 0.07


def test_sft_is_pretraining_step_on_other_data():
    from seedjax.config import load_config
    from seedjax.stages import pretrain, sft

    assert sft.STAGE.train_step is pretrain.STAGE.train_step  # the same loss code, not a copy
    config = load_config("experiments/quickstart/sft.py:tiny")
    with pytest.raises(ValueError, match="config.init_from"):
        sft.validate_config(config)
    with config.unlocked():
        config.init_from = "/somewhere"
        config.sft.target = "boldness > 1"
    with pytest.raises(ValueError, match="sft.target: unknown field 'boldness'"):
        sft.validate_config(config)


def test_target_share_on_real_images_matches_metadata():
    from seedjax.stages.sft import target_share

    batch = data_pipelines.make_eval_batch(data_pipelines.default_config(), num=60, seed=0)
    share = target_share(batch["image"], batch, "ink >= 0.3 and label != 1")
    raws = [sample_metadata({"image": (im + 1) / 2, "label": lab}) for im, lab in zip(batch["image"], batch["label"])]
    expected = np.mean([md["ink"] >= 0.3 and md["label"] != 1 for md in raws])
    assert share == pytest.approx(expected)
    assert 0 < share < 1


def test_sft_config_loads_with_resolution_balancing():
    from seedjax.config import load_config

    config = load_config("experiments/quickstart/sft.py")
    assert config.stage == "sft" and config.data.balance_resolutions and config.data.filter
    pre = load_config("experiments/quickstart/pretrain.py")
    assert config.optimizer.lr < pre.optimizer.lr
