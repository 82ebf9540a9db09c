"""Serve an exported generator over HTTP, with dynamic batching.

    python -m seedjax.export --workdir=runs/quickstart/pretrain --out=exports/qs      # once
    python -m seedjax.serve --model=exports/qs [--port=8000] [--host=127.0.0.1] \\
        [--max_batch=8] [--max_wait_ms=10] [--queue_limit=64] [--max_num=8]
    curl -s localhost:8000/v1/images -d '{"prompt": "a handwritten 7", "seed": 1, "num": 2}'

--model is an export directory with the stablehlo format: the server runs its StableHLO
programs (seedjax.serving.run_exported) and reads nothing else (JSON, safetensors, StableHLO).
Concurrent requests of one size are batched up to --max_batch images (default: the export's
--batch), waiting at most --max_wait_ms for a batch to fill; at most --queue_limit requests are
admitted at once (more get 429); one request asks for at most --max_num images. Binds
127.0.0.1 unless --host says otherwise. SIGTERM stops accepting connections, answers every
admitted request, then exits 0. API: `seedjax/serving/server.py`; docs/serving.md.
Exit codes: 0 after a shutdown, 2 bad flags or export directory (one line on stderr).
"""

from __future__ import annotations

import signal
import sys

import uvicorn

from seedjax import cli
from seedjax.serving.batching import Batcher
from seedjax.serving.run_exported import ExportedGenerator, ExportError
from seedjax.serving.server import create_app


@cli.entry("seedjax.serve")
def main(argv: list[str]) -> int:
    parser = cli.Parser("seedjax.serve", __doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch", type=int, default=0, help="default: the export's --batch")
    parser.add_argument("--max_wait_ms", type=float, default=10.0)
    parser.add_argument("--queue_limit", type=int, default=64)
    parser.add_argument("--max_num", type=int, default=0, help="default: --max_batch")
    args = parser.parse(argv)
    problems = [f"--{name} must be >= {low}, got {value}" for name, value, low in
                (("port", args.port, 0), ("max_batch", args.max_batch, 0), ("max_wait_ms", args.max_wait_ms, 0),
                 ("queue_limit", args.queue_limit, 1), ("max_num", args.max_num, 0)) if value < low]
    if args.port > 65535:
        problems.append(f"--port must be <= 65535, got {args.port}")
    try:
        if problems:
            raise ExportError(problems[0])
        model = ExportedGenerator(args.model)
    except ExportError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    max_batch = args.max_batch or model.max_batch
    max_num = args.max_num or max_batch
    if max_num > max_batch:
        print(f"serve: --max_num {max_num} is more than --max_batch {max_batch}", file=sys.stderr)
        return 2
    batcher = Batcher(model, max_batch, args.max_wait_ms / 1e3, args.queue_limit)
    batcher.warmup()
    app = create_app(model, batcher, max_num)
    print(f"serve: {model.manifest['stage']} at {model.manifest['nfe']} NFE, sizes {model.size_names()}, "
          f"batches up to {max_batch} (compiled {batcher.buckets}); http://{args.host}:{args.port}", flush=True)
    # uvicorn turns SIGTERM into a graceful shutdown, then re-raises it on the handler it found
    # installed: a no-op one lets the shutdown end in exit code 0 instead of death by signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    print("serve: stopped; every admitted request was answered", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
