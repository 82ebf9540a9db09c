"""The training step's XLA options on CPUs (seedjax.train.perf.compiler_options): convolutions leave
YNNPACK, dots and reductions stay, the numbers stay, and a user's own XLA_FLAGS choice wins."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.train import perf


def step(x, w, m):
    """A 3x3 convolution, a channel mix and a reduction, each on its own (a reduction's YNNPACK fusion
    may take in the convolution that feeds it, as it does with the XLA_FLAGS form of the option)."""
    conv = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return conv, x @ m, jnp.sum(x, axis=-1)


def inputs():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((8, 64, 64, 32), (3, 3, 32, 32), (32, 32)))


def ynnpack_ops(hlo: str) -> set[str]:
    """The kinds of instruction (convolution, dot, reduce) that the compiled module runs inside YNNPACK fusions."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{$", line)
        if head:
            name = head.group(1)
        elif name:
            bodies.setdefault(name, []).append(line)
    called = re.findall(r"%ynn_fusion[\w.]* = .*kind=kCustom, calls=%([\w.\-]+)", hlo)
    text = "\n".join(line for c in called for line in bodies.get(c, []))
    return {op for op in ("convolution", "dot", "reduce") if f" {op}(" in text}


def test_convolutions_leave_ynnpack_and_dots_and_reductions_stay(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    x, w, m = inputs()
    default = jax.jit(step).lower(x, w, m).compile()
    ours = jax.jit(step, compiler_options=perf.compiler_options()).lower(x, w, m).compile()
    # The premise: this jaxlib runs all three in YNNPACK by default (a jaxlib whose default changed
    # fails here, and the pinned list in perf.CPU_COMPILER_OPTIONS needs a look).
    assert ynnpack_ops(default.as_text()) == {"convolution", "dot", "reduce"}
    assert ynnpack_ops(ours.as_text()) == {"dot", "reduce"}
    for a, b in zip(default(x, w, m), ours(x, w, m)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_a_users_own_ynnpack_flag_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=+individual_dot")
    assert perf.compiler_options() == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    assert perf.compiler_options() == perf.CPU_COMPILER_OPTIONS
