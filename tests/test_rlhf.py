"""RLHF: gradients through the last K sampler steps only, frozen reward models, composite reward,
clear errors for the wrong kind of reward checkpoint, and the tiny post-training pipeline."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import data_pipelines
from data_pipelines.core.tokenizer import tokenize
from experiments.common import link_widths
from experiments.quickstart import reward as reward_experiment
from experiments.quickstart import rlhf as rlhf_experiment
from seedjax import config as config_lib
from seedjax.diffusion.sampling import Sampler, refl_x0
from seedjax.models.generator import DiffusionModel, empty_captions
from seedjax.models.geometry import Geometry
from seedjax.stages import rlhf
from tests.bundles import assert_bundle_loads, assert_no_generator
from tests.runner import ROOT, check_reference_losses, env_for, read_metrics


def tiny_generator_config(reward_models: str = ""):
    cfg = rlhf_experiment.get_config("tiny")
    cfg.data.image_size = 16
    cfg.text.update(width=32, num_heads=2)
    cfg.model.update(num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6))
    cfg.init_from = "/unused"
    cfg.rlhf.reward_models = reward_models
    link_widths(cfg)
    return cfg


@pytest.fixture(scope="module")
def reward_workdir(tmp_path_factory):
    """A reward-stage workdir (its config.json is all RLHF reads before loading parameters)."""
    workdir = str(tmp_path_factory.mktemp("reward"))
    cfg = reward_experiment.get_config("tiny")
    cfg.reward_model.update(image_size=16, width=32, num_heads=2)
    config_lib.save_config(cfg, workdir)
    return workdir


def prompts_for(cfg, captions):
    tokens, mask = tokenize(captions, cfg.data.max_text_len)
    return {"tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask)}


class ToyGenerator(nnx.Module):
    """A velocity field with parameters, cheap to compile: v(x, sigma) = tanh(W x (1 + sigma) + b)."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(8, 8, rngs=rngs)

    def velocity(self, x, sigma):
        return jnp.tanh(self.linear(x * (1.0 + sigma)))


def reference_x0(params, graphdef, noise, sigmas, stop, k, leak=False):
    """Unrolled Python reference: steps before stop - k run on stop-gradient parameters (unless `leak`)."""
    live = nnx.merge(graphdef, params)
    frozen = live if leak else nnx.merge(graphdef, jax.lax.stop_gradient(params))
    x = noise
    for i in range(stop):
        m = frozen if i < stop - k else live
        x = x + (sigmas[i + 1] - sigmas[i]) * m.velocity(x, sigmas[i])
    return x - sigmas[stop] * live.velocity(x, sigmas[stop])


def test_gradients_reach_the_generator_only_through_the_last_k_steps():
    graphdef, params = nnx.split(ToyGenerator(nnx.Rngs(0)))
    sigmas = jnp.asarray(Sampler.make(8, 1.0).sigmas)
    noise = jax.random.normal(jax.random.key(1), (3, 5, 8))
    weights = jax.random.normal(jax.random.key(2), (3, 5, 8))
    velocity = lambda m, x, sigma, frozen=False: m.velocity(x, sigma)

    def grads(stop, k, remat=True, reference=False, leak=False):
        def loss(params):
            if reference:
                x0 = reference_x0(params, graphdef, noise, sigmas, stop, k, leak)
            else:
                x0 = refl_x0(nnx.merge(graphdef, params), velocity, noise, sigmas, jnp.asarray(stop), k, remat)
            return jnp.sum(x0 * weights)

        return jax.tree.leaves(jax.jit(jax.grad(loss))(params))

    for stop, k in [(5, 2), (6, 1), (3, 3)]:
        g = grads(stop, k)
        for a, b in zip(g, grads(stop, k, reference=True)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        # Remat recomputes the steps in other fusions: a few float32 ulps apart a step (2.8e-6
        # relative after 5 steps with XLA's elemental CPU emitter, which the tests use).
        for a, b in zip(g, grads(stop, k, remat=False)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        if k < stop:  # a leak through the earlier steps would change the gradient
            leaked = grads(stop, k, reference=True, leak=True)
            assert max(float(jnp.abs(a - b).max()) for a, b in zip(g, leaked)) > 1e-3


def test_remat_keeps_memory_flat_in_k():
    """With rematerialisation the backward pass keeps one latent per differentiated step, not its activations."""

    class Wide(nnx.Module):  # activations (1 MiB a step) dwarf the latent (32 KiB)
        def __init__(self, rngs):
            self.up, self.down = nnx.Linear(32, 1024, rngs=rngs), nnx.Linear(1024, 32, rngs=rngs)

        def velocity(self, x, sigma):
            return self.down(jnp.tanh(self.up(x * (1.0 + sigma))))

    graphdef, params = nnx.split(Wide(nnx.Rngs(0)))
    sigmas = jnp.asarray(Sampler.make(8, 1.0).sigmas)
    noise = jnp.ones((4, 64, 32))
    velocity = lambda m, x, sigma, frozen=False: m.velocity(x, sigma)

    def temp_bytes(k, remat):
        loss = lambda p: jnp.sum(refl_x0(nnx.merge(graphdef, p), velocity, noise, sigmas, jnp.asarray(8), k,
                                              remat) ** 2)
        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

    mib = 2**20
    assert temp_bytes(6, True) - temp_bytes(1, True) < 0.5 * mib
    assert temp_bytes(6, False) - temp_bytes(1, False) > 3 * mib


def test_guided_velocity_is_classifier_free_guidance():
    cfg = tiny_generator_config()
    model = DiffusionModel(cfg, nnx.Rngs(0))
    geometry = Geometry.image(16, 16, 1, 4)
    model.dit.proj_out.kernel[...] = 0.05 * jax.random.normal(jax.random.key(1), model.dit.proj_out.kernel.shape)
    prompts = prompts_for(cfg, ["a 3", "the digit seven"])
    x = jax.random.normal(jax.random.key(2), (2, 16, 16))

    @nnx.jit
    def both(model, x):
        guided = rlhf.guided_velocity(model, prompts, 2.5, geometry)(model, x, jnp.float32(0.4))
        t = jnp.full((2,), 0.4)
        v_c = model(x, t, model.condition(prompts), geometry)
        v_u = model(x, t, model.condition(empty_captions(prompts)), geometry)
        return guided, v_u + 2.5 * (v_c - v_u)

    guided, expected = both(model, x)
    np.testing.assert_allclose(guided, expected, rtol=1e-4, atol=1e-6)


def test_composite_reward_and_objectives():
    class Fixed:
        def __init__(self, scores):
            self.scores = jnp.asarray(scores, jnp.float32)

        def score(self, images, tokens, mask):
            return self.scores

    models = [Fixed([[0.0, 2.0], [1.0, -1.0]]), Fixed([[3.0], [-3.0]])]
    terms = [rlhf.RewardTerm("a", 0, 0, 1.0), rlhf.RewardTerm("q", 0, 1, 0.5), rlhf.RewardTerm("b", 1, 0, 2.0)]
    total, parts = rlhf.composite_reward(models, terms, None, {"tokens": None, "text_mask": None}, "logit")
    np.testing.assert_allclose(total, [0.0 + 1.0 + 6.0, 1.0 - 0.5 - 6.0])
    total, parts = rlhf.composite_reward(models, terms, None, {"tokens": None, "text_mask": None}, "prob")
    sig = lambda x: 1 / (1 + np.exp(-np.asarray(x)))
    np.testing.assert_allclose(total, sig([0, 1]) + 0.5 * sig([2, -1]) + 2 * sig([3, -3]), rtol=1e-6)
    np.testing.assert_allclose(parts["reward/q"], sig([2, -1]), rtol=1e-6)
    # ReLU(alpha - r) stops pushing rewards that are already above alpha.
    g = jax.grad(lambda r: rlhf.reward_objective(r, "relu", 0.9))(jnp.asarray([0.5, 0.95]))
    np.testing.assert_allclose(g, [-0.5, 0.0])
    g = jax.grad(lambda r: rlhf.reward_objective(r, "reward", 0.9))(jnp.asarray([0.5, 0.95]))
    np.testing.assert_allclose(g, [-0.5, -0.5])


def test_reward_spec_parsing():
    assert rlhf.parse_reward_spec("a/b#alignment:1,c:0.5, d") == [("a/b", "alignment", 1.0), ("c", "", 0.5),
                                                                  ("d", "", 1.0)]
    with pytest.raises(ValueError, match="weight 'x' in 'a:x' is not a number"):
        rlhf.parse_reward_spec("a:x")
    with pytest.raises(ValueError, match="rlhf.reward_models is empty"):
        rlhf.parse_reward_spec(" , ")


def test_frozen_reward_models_do_not_change(reward_workdir):
    cfg = tiny_generator_config(f"{reward_workdir}#alignment:1,{reward_workdir}#quality:0.5")
    cfg.rlhf.stop_window = (0.0, 1.0)
    cfg.rlhf.grad_steps = 1
    state = rlhf.init(cfg, nnx.Rngs(0))
    assert len(state.reward_models) == 1  # one model, two heads
    # Non-zero output projection (it starts at zero), so that the generator gets a gradient.
    kernel = state.model.dit.proj_out.kernel
    kernel[...] = 0.05 * jax.random.normal(jax.random.key(1), kernel.shape)
    graphdef, params = nnx.split(state)
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(state)))
    batch = {k: jnp.asarray(v) for k, v in data_pipelines.make_eval_batch(cfg.data, num=4, seed=0).items()}
    batch["loss_mask"] = jnp.ones(batch["image"].shape[:3])

    @jax.jit
    def step(params, key):
        module = nnx.merge(graphdef, params)
        metrics = rlhf.train_step(module, batch, key, cfg)
        return nnx.state(module), metrics

    for i in range(2):  # (the first step has learning rate 0: warmup)
        params, metrics = step(params, jax.random.key(i))
    after = jax.tree.map(np.array, nnx.to_pure_dict(params))
    for a, b in zip(jax.tree.leaves(before["reward_models"]), jax.tree.leaves(after["reward_models"])):
        np.testing.assert_array_equal(a, b)
    # A fresh MMDiT's blocks are gated off (adaLN-Zero): its gradient reaches the embedders, the
    # modulations and the output projection; those must have moved.
    for name in ("x_embedder", "proj_out", "final_modulation"):
        moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["model"]["dit"][name]),
                                                           jax.tree.leaves(after["model"]["dit"][name]))]
        assert all(moved), name
    assert 0.0 < float(metrics["reward"]) < 1.5  # P(yes) + 0.5 P(yes)
    assert np.isfinite(float(metrics["fm_loss"])) and float(metrics["fm_loss"]) > 0
    for name in ("reward/alignment", "reward/quality", "stop_sigma", "reward_loss"):
        assert name in metrics


def test_wrong_kind_of_reward_checkpoint_fails_clearly(tmp_path, reward_workdir):
    pretrain_dir = tmp_path / "pretrain"
    config_lib.save_config(tiny_generator_config(), str(pretrain_dir))
    cfg = tiny_generator_config(f"{pretrain_dir}:1")
    with pytest.raises(ValueError, match=r"is a 'rlhf'-stage workdir, not a reward model"):
        rlhf.validate_config(cfg)
    cfg.rlhf.reward_models = f"{tmp_path}/nothing:1"
    with pytest.raises(ValueError, match="not a seedjax workdir"):
        rlhf.validate_config(cfg)
    cfg.rlhf.reward_models = f"{reward_workdir}#aesthetics:1"
    with pytest.raises(ValueError, match="has no head 'aesthetics'"):
        rlhf.validate_config(cfg)
    cfg.rlhf.reward_models, cfg.rlhf.stop_window, cfg.rlhf.grad_steps = reward_workdir, (0.9, 1.0), 2
    with pytest.raises(ValueError, match="holds no sampler step"):
        rlhf.validate_config(cfg)

    # From the command line: exit code 2, the cause on the last line, nothing written.
    workdir = tmp_path / "rlhf"
    proc = subprocess.run(
        [sys.executable, "-m", "seedjax.main", "--config=experiments/quickstart/rlhf.py:tiny", f"--workdir={workdir}",
         f"--config.init_from={pretrain_dir}", f"--config.rlhf.reward_models={pretrain_dir}:1"],
        cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not a reward model" in proc.stderr.strip().splitlines()[-1]
    assert not workdir.exists()


@pytest.mark.slow
def test_tiny_post_training_pipeline(tmp_path):
    """pretrain -> SFT -> reward -> RLHF through `python -m seedjax.pipeline`, as the quickstart runs it."""
    import orbax.checkpoint as ocp

    root = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "seedjax.pipeline", "--pipeline=experiments/quickstart/pipeline.py:tiny",
                           f"--workdir={root}", "--config.sample_every=0"],
                          cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    timings = json.loads((root / "pipeline_timings.json").read_text())
    assert list(timings) == ["pretrain", "sft", "reward", "rlhf"]
    for name in timings:
        check_reference_losses(f"post_training_tiny/{name}", str(root / name))

    evals = {name: [r for r in read_metrics(str(root / name)) if any(k.startswith("eval/") for k in r)]
             for name in ("sft", "reward", "rlhf")}
    assert "eval/target_share" in evals["sft"][-1] and "eval/prompt_accuracy" in evals["sft"][-1]
    for head in ("alignment", "quality"):
        assert 0.0 <= evals["reward"][-1][f"eval/{head}/accuracy"] <= 1.0
    assert {"eval/reward", "eval/prompt_accuracy", "eval/frechet_distance"} <= set(evals["rlhf"][-1])
    assert "reward" in [r for r in read_metrics(str(root / "rlhf")) if "loss" in r][-1]

    # RLHF loaded the trained reward model and never changed it; it did change the generator.
    restore = lambda name: ocp.StandardCheckpointer().restore(
        os.path.join(root, name, "checkpoints", str(max(int(s) for s in os.listdir(root / name / "checkpoints"))),
                     "state"))
    rl, rw, sft = restore("rlhf"), restore("reward"), restore("sft")
    for a, b in zip(jax.tree.leaves(rl["reward_models"]["0"]), jax.tree.leaves(rw["model"])):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rl["model"]), jax.tree.leaves(sft["model"])))

    # Inference bundles: the generator alone (never the reward models RLHF keeps in its state).
    for name in ("pretrain", "sft", "rlhf"):
        assert_bundle_loads(str(root / name))
    assert_no_generator(str(root / "reward"))


@pytest.mark.parametrize("spec", [f"experiments/{family}/{stage}.py:{variant}"
                                  for family, variants in (("quickstart", ("quickstart", "tiny")),
                                                           ("seedream", ("default", "tiny")))
                                  for stage in ("sft", "reward", "rlhf") for variant in variants])
def test_post_training_configs_load(spec):
    cfg = config_lib.load_config(spec)
    assert cfg.stage == spec.split("/")[-1].split(".")[0]
    if cfg.stage == "rlhf":
        assert cfg.rlhf.num_prompts <= cfg.batch_size
        assert len(rlhf.stop_candidates(cfg)) > 0
    if cfg.stage == "reward":
        assert cfg.reward_model.max_text_len >= cfg.data.max_text_len
