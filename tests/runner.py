"""Run seedjax commands in subprocesses, as a user would, for end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_for(devices: int = 1, **extra) -> dict:
    env = dict(os.environ)
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    # Subprocess runs of the same config compile the same programs: share them on disk.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".cache", "jax"))
    # A size limit turns on JAX's file lock around cache reads and writes; without it a process
    # can read an executable another process is still writing (seen as SIGBUS under load).
    env.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_main(config: str, workdir: str, *overrides: str, devices: int = 1, timeout: float = 600,
             extra_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "seedjax.main", f"--config={config}", f"--workdir={workdir}", *extra_flags,
           *[o if o.startswith("--") else f"--config.{o}" for o in overrides]]
    return subprocess.run(cmd, cwd=ROOT, env=env_for(devices), capture_output=True, text=True, timeout=timeout)


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(workdir: str) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(workdir) if "loss" in row}
