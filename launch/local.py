"""Run N processes of one command on this machine, as a multi-host job would.

    python -m launch.local --num_processes=2 -- python -m seedjax.main --config=... --workdir=...

Each process gets SEEDJAX_COORDINATOR (127.0.0.1 and a free port), SEEDJAX_NUM_PROCESSES and
SEEDJAX_PROCESS_ID, which `seedjax.parallel.mesh.maybe_initialize_distributed` reads. Output
lines are prefixed with the rank. If any process fails, the others are stopped (SIGTERM,
then SIGKILL after --grace_s) and the launcher exits with that process's code. SIGTERM and
SIGINT to the launcher are forwarded to every process (preemption).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(stream, rank: int, out) -> None:
    for line in iter(stream.readline, b""):
        out.write(f"[rank {rank}] {line.decode(errors='replace')}")
        out.flush()
    stream.close()


def launch(command: list[str], num_processes: int, grace_s: float = 20.0, env: dict | None = None) -> int:
    port = free_port()
    procs, pumps = [], []
    for rank in range(num_processes):
        proc_env = dict(os.environ if env is None else env)
        proc_env.update(SEEDJAX_COORDINATOR=f"127.0.0.1:{port}", SEEDJAX_NUM_PROCESSES=str(num_processes),
                        SEEDJAX_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1")
        p = subprocess.Popen(command, env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(p)
        t = threading.Thread(target=_pump, args=(p.stdout, rank, sys.stdout), daemon=True)
        t.start()
        pumps.append(t)

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    exit_code = 0
    while True:
        codes = [p.poll() for p in procs]
        failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            rank, exit_code = failed[0]
            print(f"[launch.local] process {rank} exited with code {exit_code}; stopping the others",
                  file=sys.stderr, flush=True)
            _stop(procs, grace_s)
            break
        if all(c == 0 for c in codes):
            break
        time.sleep(0.2)
    for t in pumps:
        t.join(timeout=5)
    return exit_code if exit_code > 0 else (1 if exit_code else 0)


def _stop(procs, grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + grace_s
    for p in procs:
        remaining = max(deadline - time.time(), 0.0)
        try:
            p.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: python -m launch.local --num_processes=N -- COMMAND ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="launch.local")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--grace_s", type=float, default=20.0, help="SIGTERM -> SIGKILL wait when stopping")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command or args.num_processes < 1:
        print("launch.local: need a command and --num_processes >= 1", file=sys.stderr)
        return 2
    return launch(command, args.num_processes, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
