r"""Train one stage: `python -m seedjax.main --config=FILE[:ARG] --workdir=DIR [--config.key=value ...]`.

    python -m seedjax.main --config=experiments/quickstart/pretrain.py:tiny --workdir=runs/tiny \
        --config.total_steps=50 --config.optimizer.lr=3e-4

Flags:
  --config=FILE[:ARG]       experiment file defining get_config(arg); ARG like `tiny` or `variant=tiny,steps=50`
  --workdir=DIR             where config.json, checkpoints/, metrics.jsonl, samples/ and done.json go;
                            a workdir holding checkpoints resumes
  --config.<key>=<value>    override any config value (the key must exist; the value takes its type);
                            values derived from others (model.in_channels, ...) follow the override
  --stop_at_step=N          stop (with a checkpoint) after step N; the run resumes later
  --dry_run                 resolve and validate the config, build the mesh from the visible devices,
                            print {"config": ..., "mesh": ...} as JSON and exit 0; writes nothing
  --coordinator_address=H:P, --num_processes=N, --process_id=I
                            multi-host start-up (otherwise read from the environment; a dry run
                            accepts them and starts nothing)
  -h, --help                print this help

Exit codes: 0 done (total_steps reached, or stopped by --stop_at_step with a checkpoint);
2 bad config, flags or workdir (one line on stderr, nothing written); the preemption code
(config.preemption_exit_code, 143) when SIGTERM stopped an unfinished run after checkpointing;
1 other runtime failure, with its cause in the last line of stderr.
"""

from __future__ import annotations

import json
import sys

import jax

from seedjax import cli
from seedjax.config import load_config
from seedjax.eval.judges.classifier import digit_features  # data.dual_axis.visual_features='classifier'
from seedjax.parallel import mesh as mesh_lib
from seedjax.train import workdir as workdir_lib
from seedjax.train.validate import validate_config

PROG = "seedjax"


def make_parser() -> cli.Parser:
    parser = cli.Parser(PROG, __doc__, overrides="config")
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--stop_at_step", type=int, default=0)
    parser.add_argument("--dry_run", nargs="?", const=True, default=False, type=cli.parse_bool)
    parser.add_argument("--coordinator_address", default="")
    parser.add_argument("--num_processes", type=int, default=0)
    parser.add_argument("--process_id", type=int, default=-1)
    return parser


def dry_run(config) -> int:
    """What a run would use, without starting one: the resolved config and the mesh."""
    try:
        mesh = mesh_lib.make_mesh(config.mesh)
        mesh_lib.check_batch_divisible(config.batch_size, mesh)
    except mesh_lib.MeshError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"config": config.to_dict(), "mesh": {k: int(v) for k, v in mesh.shape.items()},
                      "devices": jax.device_count(), "platform": jax.devices()[0].platform},
                     indent=2, sort_keys=True, default=str))
    return 0


@cli.entry(PROG)
def main(argv: list[str]) -> int:
    args = make_parser().parse(argv)
    if not args.workdir and not args.dry_run:
        raise cli.UsageError("--workdir is required (see --help)")
    if args.stop_at_step < 0:
        raise cli.UsageError(f"--stop_at_step must be >= 0, got {args.stop_at_step}")
    config = load_config(args.config, args.overrides)
    validate_config(config)
    if args.workdir:
        workdir_lib.check_workdir(args.workdir)
    if args.dry_run:
        return dry_run(config)

    mesh_lib.maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    # After distributed start-up: nothing may touch the backend before it.
    from seedjax.train import loop

    return loop.run(config, args.workdir, stop_at_step=args.stop_at_step, classifier_features=digit_features)


if __name__ == "__main__":
    sys.exit(main())
