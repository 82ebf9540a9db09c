"""Load test of `python -m seedjax.serve` on localhost: throughput, latency percentiles, batch sizes.

    python -m benchmarks.serve --model=exports/qs [--model=exports/qs_int8 ...] [--concurrency=1,4,16] \
        [--requests=160] [--max_seconds=60] [--max_batch=16] [--max_wait_ms=10] [--max_load=1.0] [--no-append]

For each export directory a server is started on 127.0.0.1 (a free port), and for each
concurrency C, C clients send requests back to back (closed loop: each sends its next request
when the previous one is answered; prompts and seeds vary) until `--requests` are answered or
`--max_seconds` pass, after one warm-up request per client. Reported per (model, C): requests
and images per second, p50/p95/p99 latency, and the histogram of batch sizes the server formed
(from its /metrics, before and after), the throughput as a multiple of the first concurrency's,
and the CPU time per image of the server process and of the load generator (aiohttp clients in
this process): on a small machine they share the cores, so the client's time is taken from the
server's. Traffic goes only to the server this command started, on the loopback address; every
loop is bounded in count and time. A table is printed with the load average before and after, and
appended to BENCHMARKS.md unless --no-append, or unless the 1-minute load average at the start
was above --max_load (a busy machine's throughputs are not the server's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time

import aiohttp
import httpx
import numpy as np

from benchmarks import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a handwritten 7", "the number 3", "a 0", "the digit 5", "a handwritten 9"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, max_wait_ms: float, queue_limit: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "seedjax.serve", f"--model={model}", f"--port={port}",
                             f"--max_batch={max_batch}", f"--max_wait_ms={max_wait_ms}", f"--queue_limit={queue_limit}",
                             "--max_num=1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not come up in 300 s")


def batch_histogram(url: str) -> dict[int, int]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {int(s): int(n) for s, n in re.findall(r'seedjax_batches_total\{images="(\d+)"\} (\d+)', text)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


async def load(url: str, server_pid: int, concurrency: int, requests: int, max_seconds: float) -> dict:
    """C closed-loop clients on aiohttp (a lighter client than httpx: on a 2-core machine the load
    generator's CPU time is taken from the server's)."""
    latencies, failures, started = [], 0, time.perf_counter()
    counter = iter(range(10**9))

    async def client(worker: int, http: aiohttp.ClientSession):
        nonlocal failures
        async with http.post(url + "/v1/images", json={"prompt": PROMPTS[0], "seed": worker}) as response:
            await response.read()  # warm-up, not counted
        while True:
            i = next(counter)
            if i >= requests or time.perf_counter() - started > max_seconds:
                return
            t0 = time.perf_counter()
            async with http.post(url + "/v1/images", json={"prompt": PROMPTS[i % len(PROMPTS)], "seed": i}) as response:
                await response.read()
                ok = response.status == 200
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1

    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as http:
        before = batch_histogram(url)
        server_cpu, client_cpu = cpu_seconds(server_pid), sum(os.times()[:2])
        started = time.perf_counter()
        await asyncio.gather(*(client(w, http) for w in range(concurrency)))
        wall = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, sum(os.times()[:2]) - client_cpu
        after = batch_histogram(url)
    histogram = {s: after.get(s, 0) - before.get(s, 0) for s in after if after.get(s, 0) > before.get(s, 0)}
    ms = np.array(latencies) * 1e3
    n = max(len(latencies), 1)
    return {"requests": len(latencies), "failures": failures, "wall_s": wall, "rps": len(latencies) / wall,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "batches": histogram,
            "server_cpu_ms": server_cpu * 1e3 / n, "client_cpu_ms": client_cpu * 1e3 / n}


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.serve", allow_abbrev=False)
    parser.add_argument("--model", action="append", required=True, help="export directory (repeat to compare)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--max_seconds", type=float, default=60.0)
    parser.add_argument("--max_batch", type=int, default=16)
    parser.add_argument("--max_wait_ms", type=float, default=10.0)
    protocol.add_max_load(parser)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    load_before = protocol.begin(args.max_load, args.no_append)
    rows = []
    for model in args.model:
        with open(os.path.join(model, "manifest.json")) as f:
            manifest = json.load(f)
        proc, url = start_server(model, args.max_batch, args.max_wait_ms, queue_limit=max(levels) * 2)
        try:
            base = None
            for c in levels:
                r = asyncio.run(load(url, proc.pid, c, args.requests, args.max_seconds))
                base = base or r["rps"]
                hist = " ".join(f"{s}:{n}" for s, n in sorted(r["batches"].items()))
                rows.append(f"| {manifest['stage']} {manifest['nfe']} NFE {manifest['quantization']['method'][:4]} | "
                            f"{c} | {r['requests']} | {r['rps']:.2f} | {r['rps'] / base:.2f}x | {r['p50']:.0f} | "
                            f"{r['p95']:.0f} | {r['p99']:.0f} | {r['server_cpu_ms']:.1f} / {r['client_cpu_ms']:.1f} | {hist} |")
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    command = "python -m benchmarks.serve " + " ".join(sys.argv[1:])
    table = "\n".join([
        f"\n### Serving load test ({protocol.machine_header(load_before)})\n",
        f"`{command}` (max batch {args.max_batch}, max wait {args.max_wait_ms} ms; "
        "one image per request; closed loop)\n",
        f"| model | concurrency | requests | images/s | vs concurrency {levels[0]} | p50 ms | p95 ms | p99 ms | CPU ms per image (server / load generator) | batch sizes (size:count) |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, ""])
    print(table)
    protocol.append(table, load_before, args.max_load, args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
