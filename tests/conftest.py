"""Test set-up: CPU only, 8 fake devices for in-process sharding tests.

End-to-end tests run `python -m seedjax.main` in subprocesses (tests/runner.py) with their
own device count, so they never depend on this process's JAX state.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("SEEDJAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "seedjax"))
