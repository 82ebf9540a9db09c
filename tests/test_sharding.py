"""Meshes, logical-axis rules, directly sharded init and the replicated-parameter guard (8 fake CPUs)."""

import logging

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from seedjax.config import load_config
from seedjax.parallel import mesh as mesh_lib
from seedjax.parallel import sharding as sh
from seedjax.stages import pretrain
from seedjax.train import perf
from tests.runner import ROOT


def tiny_config(**model):
    cfg = load_config(f"{ROOT}/experiments/quickstart/pretrain.py:tiny")
    with cfg.unlocked():
        cfg.model.update(model)
    return cfg


def test_mesh_shape_resolution_and_errors():
    assert mesh_lib.resolve_mesh_shape(dict(data=-1, fsdp=2, tensor=2, sequence=1), 8)["data"] == 2
    with pytest.raises(mesh_lib.MeshError, match="needs 16 devices but 8"):
        mesh_lib.resolve_mesh_shape(dict(data=2, fsdp=2, tensor=4, sequence=1), 8)
    with pytest.raises(mesh_lib.MeshError, match="do not divide"):
        mesh_lib.resolve_mesh_shape(dict(data=-1, fsdp=3, tensor=1, sequence=1), 8)
    with pytest.raises(mesh_lib.MeshError, match="only one axis"):
        mesh_lib.resolve_mesh_shape(dict(data=-1, fsdp=-1), 8)
    mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2, sequence=1))
    with pytest.raises(mesh_lib.MeshError, match="batch_size=6 is not divisible"):
        mesh_lib.check_batch_divisible(6, mesh)


def test_logical_to_spec_drops_trivial_axes_and_repeats():
    mesh = mesh_lib.make_mesh(dict(data=2, fsdp=4, tensor=1, sequence=1))
    rules = sh.rules_from_config({"embed": "fsdp", "mlp": "tensor", "batch": "data,fsdp"})
    assert sh.logical_to_spec(("batch", "seq", None), rules, mesh) == P(("data", "fsdp"), None, None)
    assert sh.logical_to_spec(("embed", "mlp"), rules, mesh) == P("fsdp", None)
    assert sh.logical_to_spec(("embed", "embed"), rules, mesh) == P("fsdp", None)
    with pytest.raises(KeyError, match="no sharding rule"):
        sh.logical_to_spec(("nope",), rules, mesh)


def test_init_is_directly_sharded_over_fsdp_and_tensor():
    cfg = tiny_config()
    mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2, sequence=1))
    rules = sh.rules_from_config(cfg.sharding.rules)
    make = lambda: pretrain.init(cfg, nnx.Rngs(0))
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = sh.state_shardings(abstract, mesh, rules)
    with jax.set_mesh(mesh):
        state = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)()
    module = nnx.merge(graphdef, state)
    kernel = module.model.dit.double_blocks[0].img.mlp.up.kernel[...]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    shard = kernel.addressable_shards[0].data
    assert shard.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)
    # Adam moments follow their parameter's layout.
    mu = module.optimizer.opt_state.inner_state[-1][0].mu
    assert jax.tree.leaves(mu)[0].sharding.mesh.shape == mesh.shape


def test_large_replicated_parameter_fails_or_warns(caplog):
    cfg = tiny_config(num_heads=8, head_dim=64, axes_dims_rope=(16, 24, 24))  # MLP kernels of 1 MiB+
    mesh = mesh_lib.make_mesh(dict(data=2, fsdp=4, tensor=1, sequence=1))
    rules = sh.rules_from_config({"embed": "", "mlp": "", "heads": "", "modulation": ""})
    _, abstract = nnx.split(nnx.eval_shape(lambda: pretrain.init(cfg, nnx.Rngs(0))))
    shardings = sh.state_shardings(abstract, mesh, rules)
    from seedjax.train.loop import TrainingAborted

    with pytest.raises(TrainingAborted, match="fully replicated with fsdp=4"):
        perf.check_replicated_params(abstract, shardings, mesh, "error")
    with caplog.at_level(logging.WARNING, logger="seedjax"):
        perf.check_replicated_params(abstract, shardings, mesh, "warn")
    assert "fully replicated" in caplog.text
    good = sh.state_shardings(abstract, mesh, sh.rules_from_config(None))
    perf.check_replicated_params(abstract, good, mesh, "error")  # the default rules shard them


def test_constrain_is_noop_without_mesh_and_checks_rank():
    x = np.ones((4, 3), np.float32)
    assert sh.constrain(x, ("batch", None)) is x
    mesh = mesh_lib.make_mesh(dict(data=8, fsdp=1, tensor=1, sequence=1))
    with jax.set_mesh(mesh):
        with pytest.raises(ValueError, match="2 names"):
            jax.jit(lambda a: sh.constrain(a, ("batch", None)))(np.ones((8,), np.float32))


def test_linear_on_a_data_fsdp_tensor_mesh_matches_one_device():
    """x @ kernel ('heads' -> tensor, 'embed' -> fsdp) times a tensor-sharded gate, batch on
    (data, fsdp): XLA's partitioner (JAX 0.10.2) got it wrong unless the layer gathers
    the kernel over the batch axes itself (`sharding.param_value`)."""
    from jax.sharding import NamedSharding

    from seedjax.models import layers

    mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2, sequence=1))
    rules = sh.rules_from_config(None)
    graphdef, state = nnx.split(layers.Linear(96, 96, rngs=nnx.Rngs(0), names=("heads", "embed")))
    rng = np.random.RandomState(0)
    x, gate = rng.randn(8, 16, 96).astype(np.float32), rng.randn(8, 96).astype(np.float32)
    f = lambda s, x, gate: gate[:, None] * nnx.merge(graphdef, s)(x)
    ref = jax.jit(f)(state, x, gate)
    with jax.set_mesh(mesh), sh.axis_rules(rules):
        put = lambda v, spec: jax.device_put(v, NamedSharding(mesh, spec))
        sharded = jax.device_put(state, sh.state_shardings(state, mesh, rules))
        out = jax.jit(f)(sharded, put(x, P(("data", "fsdp"), None, "tensor")), put(gate, P(("data", "fsdp"), "tensor")))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
