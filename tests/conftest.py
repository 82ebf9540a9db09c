"""Test set-up: CPU only, 8 fake devices for in-process sharding tests, cheap XLA code generation.

End-to-end tests run `python -m seedjax.main` in subprocesses (tests/runner.py) with their
own device count, so they never depend on this process's JAX state; they inherit XLA_FLAGS.
"""

import os

# XLA's cheaper CPU code generation, here and in every subprocess: compilation dominates the
# tests' tiny programs. LLVM at -O0 without its expensive passes took test_pretrain +
# test_video_dit from 231 to 146 s; the elemental emitter instead of the MLIR fusion emitters
# (which run an MLIR pipeline for every fusion) took the train step's compile from 15.1 to 11.2 s
# for the tiny VAE and from 10.1 to 7.3 s for the tiny video DiT. The HLO is the same; the last
# bits of some float results are not, so the reference losses are recorded with these flags.
# Long training loops (the judges' `small_cnn.fit`) ask for XLA's defaults themselves.
# SEEDJAX_TEST_FULL_XLA=1 keeps XLA's defaults.
FAST_XLA = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
            "--xla_cpu_use_fusion_emitters=false")
# One XLA thread per test process (and subprocess): the two xdist workers already keep both
# cores busy, and XLA's thread pools on top of them only add switching (two concurrent tiny runs
# 51 s instead of 62 s, their train-step compile 16 s instead of 25 s; the losses bit for bit
# the same). SEEDJAX_TEST_XLA_THREADS=1 keeps XLA's thread pools. (Only `--` flags here: XLA
# stops reading XLA_FLAGS at a bare word, and tests/runner.py appends the device count.)
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=8"
if os.environ.get("SEEDJAX_TEST_FULL_XLA") != "1" and "xla_backend_optimization_level" not in flags:
    flags += f" {FAST_XLA}"
if os.environ.get("SEEDJAX_TEST_XLA_THREADS") != "1" and "xla_cpu_multi_thread_eigen" not in flags:
    flags += f" {ONE_THREAD}"
os.environ["XLA_FLAGS"] = flags.strip()
os.environ.setdefault("SEEDJAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "seedjax"))


import pytest  # noqa: E402  (after the environment above)

# absl's log handler keeps the sys.stderr of the moment absl.logging is first imported. Imported
# inside a test that uses capsys, that is the test's capture, closed when the test ends, and every
# later warning of orbax/jax fails with "--- Logging error ---" into whichever test is running
# (a CI failure of test_export's one-line check). Imported here, it is pytest's session capture.
import absl.logging  # noqa: E402,F401


@pytest.fixture(scope="session")
def straight(tmp_path_factory):
    """20 uninterrupted steps of the tiny quickstart on one device, sampling off, a loss row per
    step: the reference run of the end-to-end tests (tests/test_train_e2e.py), read by several files.

    Under xdist the workers share one run: the first to need it trains it in the session's
    directory (the parent of each worker's own) while the others wait on a lock."""
    from filelock import FileLock

    from tests.runner import run_main

    if "PYTEST_XDIST_WORKER" not in os.environ:  # no xdist: this session's own directory
        workdir = tmp_path_factory.mktemp("straight")
    else:
        workdir = tmp_path_factory.getbasetemp().parent / "straight"
    with FileLock(str(workdir) + ".lock"):
        if not (workdir / "done.json").exists():
            proc = run_main("experiments/quickstart/pretrain.py:tiny", str(workdir), "sample_every=0", "log_every=1")
            assert proc.returncode == 0, proc.stderr[-3000:]
    return str(workdir)


def pytest_collection_modifyitems(config, items):
    """Files with end-to-end runs first, longest first, each file's order kept.

    `launch/test.sh` hands whole files to the xdist workers (`--dist loadfile`), so that a
    module's shared run (a module-scoped fixture) is built once, not once per worker. A file's
    weight is the largest `minutes` of its `slow` marks (`pytest.mark.slow(minutes=15)`; 1 when
    not given; 0 for a file with no slow test): starting the longest files first keeps one worker
    from running a long file alone at the end."""
    weight = {}
    for item in items:
        for mark in item.iter_markers("slow"):
            weight[item.path] = max(weight.get(item.path, 0), mark.kwargs.get("minutes", 1))
    items.sort(key=lambda item: -weight.get(item.path, 0))


def pytest_report_header(config):
    """The machine and libraries, which decide whether the reference losses are checked bit for bit."""
    import json

    from tests.runner import OTHER_ENVIRONMENT_RTOL as OTHER_RTOL, REFERENCE_LOSSES, environment, recorded_environment

    env, table = environment(), json.load(open(REFERENCE_LOSSES))
    runs = [name for name in table if not name.startswith("_")]
    exact = sum(recorded_environment(name, table) == env for name in runs)
    same = f"bit for bit for {exact} of {len(runs)} runs, the others within rtol {OTHER_RTOL} (recorded elsewhere)"
    return [f"seedjax environment: {env['cpu'].get('model name')} family {env['cpu'].get('cpu family')} "
            f"model {env['cpu'].get('model')}, {env['cores']} cores, {env['packages']}; reference losses checked {same}"]
