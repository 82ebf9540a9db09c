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
ENVIRONMENT_KEY = "_environment"  # where the table's runs were recorded
# Run name -> the environment it was recorded in, for the runs recorded somewhere else (a run
# added on another machine keeps its exact check there, and the others keep theirs).
ELSEWHERE_KEY = "_recorded_elsewhere"
# Another CPU or library release moves the last bits of a run. The chained distillation stages
# amplify that most: their losses are 1e-9..1e-5, differences of nearly equal terms (DMD's, seen
# moving 8e-3 relative between two machines whose teachers agreed to 5e-8).
OTHER_ENVIRONMENT_RTOL = 2e-2


def environment() -> dict:
    """What decides a run's last bits: the CPU (LLVM picks its code from the family and model), its
    core count (XLA's thread split), the numeric libraries and the XLA flags (the device count aside)."""
    from importlib.metadata import version

    cpu = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = (part.strip() for part in line.partition(":"))
            if key in ("vendor_id", "model name", "cpu family", "model", "stepping") and key not in cpu:
                cpu[key] = value
            elif key == "flags" and "flags" not in cpu:
                cpu["flags"] = " ".join(sorted(f for f in value.split() if f.startswith(("avx", "amx", "fma", "f16c"))))
    flags = " ".join(sorted(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f))
    return {"cpu": cpu, "cores": os.cpu_count(), "xla_flags": flags,
            "packages": {p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy")}}


def recorded_environment(name: str | None = None, table: dict | None = None) -> dict | None:
    """The environment run `name` was recorded in (None: the table's own)."""
    if table is None:
        with open(REFERENCE_LOSSES) as f:
            table = json.load(f)
    return table.get(ELSEWHERE_KEY, {}).get(name) or table.get(ENVIRONMENT_KEY)


def loss_rows(workdir: str) -> list[dict]:
    """Every logged loss of a run: 'loss' and each '*_loss' metric, per log step."""
    return [{k: v for k, v in row.items() if k == "step" or k == "loss" or k.endswith("_loss")}
            for row in read_metrics(workdir) if "loss" in row]


def check_reference_losses(name: str, workdir: str) -> None:
    """The run's losses equal those written down in tests/reference_losses.json under `name`.

    The values must not change with refactors. In the environment they were recorded in (the
    file's "_environment": CPU, cores, libraries, XLA flags) a run reproduces them bit for bit, cold
    compilation cache or warm, and the check is exact. Elsewhere it allows OTHER_ENVIRONMENT_RTOL:
    enough for another machine's last bits, far from what a changed RNG split, loss term or
    model does (whole percents to orders of magnitude). SEEDJAX_RECORD_LOSSES=1 writes the current
    values instead (after a deliberate change of results, with a note in the commit). A run recorded
    outside the table's environment keeps its own (ELSEWHERE_KEY); to move the whole table to a
    new environment, delete its ENVIRONMENT_KEY and record every run there.
    """
    import warnings

    import numpy as np

    rows = loss_rows(workdir)
    table = json.load(open(REFERENCE_LOSSES)) if os.path.exists(REFERENCE_LOSSES) else {}
    if os.environ.get("SEEDJAX_RECORD_LOSSES") == "1":
        table[name], here = rows, environment()
        table.setdefault(ENVIRONMENT_KEY, here)
        elsewhere = table.pop(ELSEWHERE_KEY, {})
        elsewhere.pop(name, None)
        if here != table[ENVIRONMENT_KEY]:
            elsewhere[name] = here
        if elsewhere:
            table[ELSEWHERE_KEY] = elsewhere
        with open(REFERENCE_LOSSES, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        return
    assert name in table, f"no reference losses for {name!r}; record them with SEEDJAX_RECORD_LOSSES=1"
    same = recorded_environment(name, table) == environment()
    if not same:
        warnings.warn(f"{name}: not the environment the reference losses were recorded in; compared "
                      f"within rtol {OTHER_ENVIRONMENT_RTOL}, not bit for bit")
    expected = table[name]
    assert [r["step"] for r in rows] == [r["step"] for r in expected], name
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys(), (name, got.keys(), want.keys())
        for key in want:
            message = f"{name} step {got['step']} {key}"
            if same:
                assert got[key] == want[key], f"{message}: {got[key]!r} != {want[key]!r} (recorded bit for bit here)"
            else:
                np.testing.assert_allclose(got[key], want[key], rtol=OTHER_ENVIRONMENT_RTOL, err_msg=message)


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
