"""`config.evals`: evaluators built by name from config, each on its own cadence.

What must hold: the registry builds every shipped config's entries (types, cadences); an unknown
type or option is a config error (exit 2, naming the key, before anything is written); each
evaluator runs on its own cadence and prefix, all of a step in one metrics row; the generator
evaluators compile the stage's sampler once across calls and share one generation per step; an
image-folder config gets metrics that do not assume digits.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from seedjax.config import ConfigError, load_config
from seedjax.eval import digit_prompts, image_folder, samples, target_share
from seedjax.eval.judges import classifier
from seedjax.schema.evals import eval_entry, generator_entry
from seedjax.train import evaluators
from seedjax.train.stage import Stage
from seedjax.train.validate import validate_config
from tests.runner import ROOT, env_for, read_metrics
from tests.test_custom_data import DIGIT_KEYS, FakeClassifier, make_folder

PRETRAIN = f"{ROOT}/experiments/quickstart/pretrain.py"


def config(spec: str = f"{PRETRAIN}:tiny", **evals) -> ml_collections.ConfigDict:
    """The tiny quickstart config, evaluating every 10 steps, with `evals` entries added."""
    cfg = load_config(spec)
    with cfg.unlocked():
        cfg.eval_every = 10
        for name, entry in evals.items():
            cfg.evals[name] = entry
    return cfg


# --------------------------------------------------------------------------- registry and validation


def test_shipped_configs_build_their_evaluators():
    cases = {
        f"{PRETRAIN}": {"generator": (digit_prompts.Evaluator, 1200)},
        f"{ROOT}/experiments/quickstart/sft.py:tiny": {"generator": (digit_prompts.Evaluator, 6),
                                                       "target_share": (target_share.Evaluator, 6)},
        f"{ROOT}/experiments/quickstart/reward.py:tiny": {"accuracy": (None, 10)},
        f"{ROOT}/experiments/quickstart/vae.py:tiny": {"reconstruction": (None, 20)},
        f"{ROOT}/experiments/quickstart/distill_cfg.py:tiny": {},  # eval_every 0: nothing runs, nothing built
    }
    for spec, expected in cases.items():
        built = {e.name: e for e in evaluators.build(load_config(spec))}
        assert set(built) == set(expected), spec
        for name, (cls, every) in expected.items():
            assert built[name].every == every and built[name].prefix == "eval/", (spec, name)
            if cls is not None:
                assert type(built[name].evaluator) is cls
    rlhf = {e.name: type(e.evaluator).__module__
            for e in evaluators.build(load_config(f"{ROOT}/experiments/quickstart/rlhf.py:tiny"))}
    assert rlhf == {"generator": "seedjax.eval.digit_prompts", "reward": "seedjax.eval.rlhf_reward"}
    # Options: 0 takes config.eval's held-out set; an entry's own value wins.
    cfg = config(probe=generator_entry("digit_prompts", num_prompts=3, every=7, prefix="probe/"))
    built = {e.name: e for e in evaluators.build(cfg)}
    assert (built["generator"].evaluator.num_prompts, built["generator"].evaluator.batch_size) == (20, 20)
    assert (built["probe"].evaluator.num_prompts, built["probe"].evaluator.batch_size) == (3, 3)
    assert (built["probe"].every, built["probe"].prefix) == (7, "probe/")


@pytest.mark.parametrize("entry, message", [
    (eval_entry("no_such_evaluator"), r"config\.evals\.bad\.type: unknown evaluator type 'no_such_evaluator'"),
    (eval_entry("report"), r"config\.evals\.bad\.type: seedjax\.eval\.report is not an evaluator"),
    (eval_entry("judges.classifier"), r"config\.evals\.bad\.type: 'judges\.classifier' is not an evaluator type"),
    (generator_entry("digit_prompts", num_promts=5), r"config\.evals\.bad\.num_promts: unknown option of evaluator "
                                                     r"type 'digit_prompts' \(its options: num_prompts, batch_size\)"),
    (eval_entry("digit_prompts", every=-2), r"config\.evals\.bad\.every must be >= -1"),
    (eval_entry("reconstruction"), r"config\.evals\.bad: type reconstruction evaluates the VAE stage"),
])
def test_a_bad_entry_is_a_config_error_naming_the_key(entry, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(config(bad=entry))


def test_digit_judges_refuse_your_own_images_when_they_would_run(tmp_path):
    cfg = load_config(f"{ROOT}/experiments/custom/folder_pretrain.py:tiny,path={tmp_path}")
    assert cfg.evals.generator.type == "image_folder"
    with cfg.unlocked():
        cfg.evals.generator.type = "digit_prompts"
    with pytest.raises(ConfigError, match="config.evals.generator: type digit_prompts judges digits.*image_folder"):
        validate_config(cfg)
    # An entry that never runs is not built (a run that does not evaluate is not stopped), but its
    # type and options are still checked.
    with cfg.unlocked():
        cfg.eval_every = 0
    validate_config(cfg)
    assert evaluators.build(cfg) == []
    with cfg.unlocked():
        cfg.evals.generator.type = "digit_promts"
    with pytest.raises(ConfigError, match="config.evals.generator.type: unknown evaluator type"):
        validate_config(cfg)


def test_cli_exits_2_before_anything_is_written(tmp_path):
    """An unknown type from the command line, and an unknown option in a config file."""
    bad_file = tmp_path / "bad_option.py"
    bad_file.write_text("from experiments.quickstart import pretrain\n"
                        "from seedjax.schema.evals import generator_entry\n\n\n"
                        "def get_config(arg=None):\n"
                        "    cfg = pretrain.get_config('tiny')\n"
                        "    cfg.evals.probe = generator_entry('image_folder', feature_sise=4)\n"
                        "    return cfg\n")
    cases = [([f"--config={PRETRAIN}:tiny", "--config.evals.generator.type=digit_promts"],
              "config.evals.generator.type: unknown evaluator type 'digit_promts'"),
             ([f"--config={bad_file}"], "config.evals.probe.feature_sise: unknown option of evaluator type "
                                        "'image_folder'")]
    for i, (args, message) in enumerate(cases):
        workdir = tmp_path / f"run{i}"
        proc = subprocess.run([sys.executable, "-m", "seedjax.main", *args, f"--workdir={workdir}"], cwd=ROOT,
                              env=env_for(1), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr.strip().splitlines()[-1]
        assert not workdir.exists()


# --------------------------------------------------------------------------- cadence in the loop


class CountingEvaluator:
    """A stand-in evaluator type ('counting'): how often it ran and on which state."""

    def __init__(self, config, *, label: str = ""):
        self.label, self.calls = label, 0

    def run(self, state, stage, rng):
        self.calls += 1
        yield "calls", self.calls
        yield "has_model", float(hasattr(state, "model"))


def test_each_evaluator_runs_on_its_own_cadence_in_one_row(tmp_path, monkeypatch):
    from seedjax.train import loop

    real = evaluators.evaluator_class
    monkeypatch.setattr(evaluators, "evaluator_class",
                        lambda name, where: CountingEvaluator if name == "counting" else real(name, where))
    cfg = config(every_eval=eval_entry("counting", label="a"),  # eval_every (2)
                 thirds=eval_entry("counting", every=3, prefix="probe/", label="b"),
                 never=eval_entry("counting", every=0, label="c"))
    with cfg.unlocked():
        del cfg.evals["generator"]
        cfg.update(total_steps=7, eval_every=2, log_every=7, checkpoint_every=7, sample_every=0)
    assert loop.run(cfg, str(tmp_path)) == 0
    rows = [r for r in read_metrics(str(tmp_path)) if "loss" not in r]
    assert [(r["step"], sorted(r)) for r in rows] == [
        (2, ["eval/calls", "eval/has_model", "step"]),
        (3, ["probe/calls", "probe/has_model", "step"]),
        (4, ["eval/calls", "eval/has_model", "step"]),
        (6, ["eval/calls", "eval/has_model", "probe/calls", "probe/has_model", "step"]),  # one row for both
        (7, ["eval/calls", "eval/has_model", "probe/calls", "probe/has_model", "step"]),  # the last step
    ]
    assert rows[-1]["eval/calls"] == 4 and rows[-1]["probe/calls"] == 3 and rows[-1]["eval/has_model"] == 1.0


# --------------------------------------------------------------------------- generator evaluators


class TinyState(nnx.Module):
    def __init__(self):
        self.scale = nnx.Param(jnp.full((), 0.5))


def counting_stage(traces: list, channels: int, nfe=None) -> Stage:
    """A stage whose `sample` hook counts its traces and draws scaled noise [N, 1, H, W, C]."""

    def sample(state, config, rng, batch):
        traces.append(batch["tokens"].shape)
        size = config.data.image_size
        noise = jax.random.normal(rng, (batch["tokens"].shape[0], 1, size, size, channels))
        return jnp.tanh(state.scale[...] * noise)

    return Stage(init=lambda *a: None, train_step=lambda *a: {}, sample=sample, nfe=nfe)


def test_generator_evaluator_compiles_its_sampler_once_and_shares_the_generation(monkeypatch):
    monkeypatch.setattr(classifier, "get_classifier", lambda size: FakeClassifier())
    cfg = config(target_share=generator_entry("target_share", target="ink >= 0.1"))
    with cfg.unlocked():
        cfg.eval.update(num_prompts=6, batch_size=4)  # two chunks, the last one padded
    built = {e.name: e for e in evaluators.build(cfg)}
    calls = []
    real_generate_all = samples.generate_all
    monkeypatch.setattr(samples, "generate_all", lambda *a, **k: calls.append(1) or real_generate_all(*a, **k))
    traces = []
    stage = counting_stage(traces, channels=1, nfe=lambda c: 4)
    results = []
    for step in (1, 2):
        state = TinyState()  # a fresh module each time, as the loop merges one per evaluation
        key = jax.random.fold_in(jax.random.key(0), step)
        results.append({**built["generator"].run(state, stage, key), **built["target_share"].run(state, stage, key)})
    assert traces == [(4, cfg.data.max_text_len)]  # one trace, of the padded chunk shape, for both steps
    assert len(calls) == 2  # one generation per step: target_share reused the generator entry's images
    for r in results:
        assert {"eval/prompt_accuracy", "eval/frechet_distance", "eval/classifier_test_accuracy",
                "eval/seconds_per_image", "eval/target_share", "eval/target_share_real"} <= set(r)
        assert r["eval/nfe"] == 4.0 and 0.0 <= r["eval/target_share"] <= 1.0


def test_an_image_folder_config_gets_metrics_that_do_not_assume_digits(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(classifier, "get_classifier", lambda size: made.append(size) or FakeClassifier())
    folder = make_folder(str(tmp_path / "photos"))
    cfg = load_config(f"{ROOT}/experiments/custom/folder_pretrain.py:tiny,path={folder}")
    (ev,) = evaluators.build(cfg)
    assert isinstance(ev.evaluator, image_folder.Evaluator) and ev.every == cfg.total_steps
    traces = []
    out = ev.run(TinyState(), counting_stage(traces, channels=3), jax.random.key(0))
    assert set(out) == {"eval/pixel_frechet_distance", "eval/channel_mean_gap", "eval/channel_std_gap",
                        "eval/diversity_ratio", "eval/seconds_per_image"}
    assert all(np.isfinite(v) for k, v in out.items() if k != "eval/seconds_per_image")
    assert not [k for k in out if any(d in k for d in DIGIT_KEYS)] and not made


def test_image_statistics_order_distributions():
    rng = np.random.default_rng(0)
    real = np.tanh(rng.normal(0.3, 0.5, (64, 16, 16, 3)))
    same = np.tanh(rng.normal(0.3, 0.5, (64, 16, 16, 3)))
    dark = np.tanh(rng.normal(-0.5, 0.5, (64, 16, 16, 3)))
    collapsed = np.repeat(same[:1], 64, axis=0)
    close, far = image_folder.compare(same, real, 8), image_folder.compare(dark, real, 8)
    assert close["pixel_frechet_distance"] < 0.1 * far["pixel_frechet_distance"]
    assert close["channel_mean_gap"] < 0.05 < far["channel_mean_gap"]
    assert 0.9 < close["diversity_ratio"] < 1.1 and image_folder.compare(collapsed, real, 8)["diversity_ratio"] < 1e-6
    assert image_folder.pooled(real, 4).shape == (64, 4 * 4 * 3)
    with pytest.raises(ValueError, match="channels"):
        image_folder.compare(real[..., :1], real, 8)


def test_map_chunks_pads_the_last_chunk():
    shapes = []

    def fn(part, start):
        shapes.append(part["x"].shape)
        return {"y": part["x"] * 2 + start * 0}

    out = samples.map_chunks(fn, {"x": np.arange(10.0)[:, None]}, 4)
    assert shapes == [(4, 1)] * 3 and out["y"].shape == (10, 1) and out["y"][-1, 0] == 18.0
