"""The shared tail of every benchmark: the machine header, the load check before appending to
BENCHMARKS.md, and interleaved timing of several arms.

A benchmark reads the load average when it starts (`begin`), describes the machine with
`machine_header(load_before)` (which reads the load again: after the run) and hands its
finished text to `append`, which writes it to BENCHMARKS.md only when the 1-minute load
average at the start was at most `--max_load` (default 1.0): numbers measured on a busy
machine are the machine's, not the code's. A refusal is one line on stderr.

`SEEDJAX_BENCHMARKS_MD=path` sends the appended text to another file (the accelerator run
collects its tables that way); tests pass `path=` directly.

`interleave({"A": fa, "B": fb}, rounds=R)` times the arms in the order A B A B ... (warm-up
rounds first, untimed) so that a change of the machine's state during the run falls on every
arm alike, and returns each arm's times with their median, min and max.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
DEFAULT_MAX_LOAD = 1.0
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# --------------------------------------------------------------------------- machine


def load_average() -> float:
    """The 1-minute load average, or nan where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity): the size of XLA's CPU thread pool."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def xla_cpu_threads() -> str:
    """What XLA's CPU backend runs its intra-op work on, as far as the environment says."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen=false" in flags.replace(" ", ""):
        return "1 (xla_cpu_multi_thread_eigen=false)"
    return f"{usable_cpus()} (one per usable CPU)"


def thread_settings() -> str:
    """XLA_FLAGS, torch's thread counts when torch is imported, and the OpenMP/BLAS variables."""
    parts = [f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '') or 'unset'}", f"XLA CPU threads {xla_cpu_threads()}"]
    torch = sys.modules.get("torch")
    if torch is not None:
        parts.append(f"torch intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")
    parts += [f"{name}={os.environ.get(name, 'unset')}" for name in THREAD_ENV]
    return ", ".join(parts)


def machine_header(load_before: float, load_after: float | None = None) -> str:
    """One line: date, CPU model and architecture, cores, load before and after, threads.

    `load_after` defaults to the load average now (call this at the end of the run)."""
    load_after = load_average() if load_after is None else load_after
    cores = os.cpu_count() or 1
    usable = usable_cpus()
    core_text = f"{cores} cores" + (f" ({usable} usable)" if usable != cores else "")
    return (f"{datetime.date.today()}, {cpu_model()} ({platform.machine()}), {core_text}, 1-minute load average "
            f"{load_before:.2f} before, {load_after:.2f} after; threads: {thread_settings()}")


# --------------------------------------------------------------------------- appending


def add_max_load(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max_load", type=float, default=DEFAULT_MAX_LOAD,
                        help="append to BENCHMARKS.md only if the 1-minute load average at the start was at most "
                             f"this (default {DEFAULT_MAX_LOAD})")


def refusal(load_before: float, max_load: float) -> str | None:
    """Why a run that started at `load_before` may not be appended, or None if it may."""
    if math.isnan(load_before):
        return "not appended to BENCHMARKS.md: the load average could not be read at the start"
    if load_before > max_load:
        return (f"not appended to BENCHMARKS.md: the 1-minute load average was {load_before:.2f} at the start "
                f"(above --max_load={max_load:g}); rerun on an idle machine")
    return None


def begin(max_load: float = DEFAULT_MAX_LOAD, no_append: bool = False) -> float:
    """Read the load average at the start; say at once (stderr) when the table will not be appended."""
    load_before = load_average()
    reason = None if no_append else refusal(load_before, max_load)
    if reason:
        print(f"note: {reason.replace('not appended', 'will not append')}", file=sys.stderr, flush=True)
    return load_before


def target_path(path: str | None = None) -> str:
    return path or os.environ.get("SEEDJAX_BENCHMARKS_MD") or BENCHMARKS_MD


def append(table: str, load_before: float, max_load: float = DEFAULT_MAX_LOAD, no_append: bool = False,
           path: str | None = None) -> bool:
    """Append `table` to BENCHMARKS.md (or `path`) unless `no_append` or the machine was busy at the start.

    Returns whether it was written. A refusal for load prints one line on stderr and writes nothing."""
    if no_append:
        return False
    reason = refusal(load_before, max_load)
    if reason:
        print(reason, file=sys.stderr, flush=True)
        return False
    with open(target_path(path), "a") as f:
        f.write(table if table.endswith("\n") else table + "\n")
    return True


# --------------------------------------------------------------------------- interleaving


def summarize(times: list[float]) -> dict:
    return {"times": list(times), "median": statistics.median(times), "min": min(times), "max": max(times)}


def interleave(arms: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1,
               clock: Callable[[], float] = time.perf_counter, block: int = 1) -> dict[str, dict]:
    """Call the arms in rounds A B A B ...: `warmup` untimed rounds, then `rounds` timed ones.

    In each turn an arm is called `block` times in a row, and its time is per call. Each call
    must finish its work before returning (block on device results). Returns, per arm in the
    given order, {"times", "median", "min", "max"} of its timed turns (seconds per call)."""
    if not arms:
        raise ValueError("interleave: no arms")
    if rounds < 1 or warmup < 0 or block < 1:
        raise ValueError(f"interleave: rounds and block must be >= 1 and warmup >= 0, got {rounds}, {block}, {warmup}")
    if block > 1:
        turns = {name: (lambda fn=fn: [fn() for _ in range(block)]) for name, fn in arms.items()}
        stats = interleave(turns, rounds, warmup, clock)
        return {name: summarize([t / block for t in st["times"]]) for name, st in stats.items()}
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    times = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: summarize(t) for name, t in times.items()}


def spread(stats: dict) -> str:
    """'median (min-max)' in the unit of the times."""
    return f"{stats['median']:.4f} ({stats['min']:.4f}-{stats['max']:.4f})"
