"""Run seedjax commands in subprocesses, as a user would, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

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


# --------------------------------------------------------------------------- reference losses

REFERENCE_LOSSES = os.path.join(ROOT, "tests", "reference_losses.json")


def loss_rows(workdir: str) -> list[dict]:
    """Every logged loss of a run: 'loss' and each '*_loss' metric, per log step."""
    return [{k: v for k, v in row.items() if k == "step" or k == "loss" or k.endswith("_loss")}
            for row in read_metrics(workdir) if "loss" in row]


def check_reference_losses(name: str, workdir: str) -> None:
    """The run's losses equal those written down in tests/reference_losses.json under `name`.

    The values were recorded before the generator core moved out of the stages (issue 13) and
    must not change with refactors: on the recording machine they are reproduced bit for bit.
    The tolerance (rtol 2e-5) only absorbs another CPU's code generation; a changed RNG split,
    loss or model changes them by orders of magnitude more. SEEDJAX_RECORD_LOSSES=1 writes the
    current values instead (after a deliberate change of results, with a note in the commit).
    """
    import numpy as np

    rows = loss_rows(workdir)
    table = json.load(open(REFERENCE_LOSSES)) if os.path.exists(REFERENCE_LOSSES) else {}
    if os.environ.get("SEEDJAX_RECORD_LOSSES") == "1":
        table[name] = rows
        with open(REFERENCE_LOSSES, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        return
    assert name in table, f"no reference losses for {name!r}; record them with SEEDJAX_RECORD_LOSSES=1"
    expected = table[name]
    assert [r["step"] for r in rows] == [r["step"] for r in expected], name
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys(), (name, got.keys(), want.keys())
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=1e-7, err_msg=f"{name} step {got['step']} {key}")


# --------------------------------------------------------------------------- a server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(export_dir: str, *flags: str):
    """A `python -m seedjax.serve` process; yields (base URL, Popen) once /healthz answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "seedjax.serve", f"--model={export_dir}", f"--port={port}", *flags],
                            cwd=ROOT, env=env_for(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.3)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def post_all(url: str, bodies: list, path: str = "/v1/images") -> list:
    """Send every body at once (one connection each) and collect the httpx responses in order."""
    import httpx

    async def go():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post(url + path, **body) for body in bodies))

    return asyncio.run(go())


def causal_copy(workdir: str, out: str, window: int = 2) -> str:
    """A copy of a bidirectional video run that runs block-causally (model.causal, a causal window;
    the same parameters): what AAPT's adaptation starts from, and a streamable checkpoint for tests."""
    import shutil

    shutil.copytree(workdir, out, ignore=shutil.ignore_patterns("samples", "tb", "metrics.jsonl"))
    path = os.path.join(out, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["model"].update(causal=True, causal_window=window)
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return out
