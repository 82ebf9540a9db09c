"""Entry point: `python -m seedjax.main --config=FILE[:ARG] --workdir=DIR [--config.key=value ...]`.

Other flags:
  --stop_at_step=N          stop (with a checkpoint) after step N; the run resumes later
  --coordinator_address=H:P, --num_processes=N, --process_id=I
                            multi-host start-up (otherwise read from the environment)

Exit codes: 0 done (or preempted with a checkpoint), 2 bad config or arguments, 1 runtime failure
with its cause in the last line of stderr.
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m seedjax.main --config=FILE[:ARG] --workdir=DIR [--config.key=value ...]"


def parse_argv(argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """argv -> (flags, config overrides). Accepts --k=v and --k v."""
    flags, overrides = {}, {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise SystemExit(f"seedjax: unexpected argument {arg!r}\n{USAGE}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = arg[2:], argv[i + 1]
            i += 1
        else:
            key, value = arg[2:], "true"
        if key.startswith("config."):
            overrides[key[len("config.") :]] = value
        else:
            flags[key] = value
        i += 1
    return flags, overrides


KNOWN_FLAGS = {"config", "workdir", "stop_at_step", "coordinator_address", "num_processes", "process_id"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from seedjax.config import ConfigError, apply_overrides, load_config

    try:
        flags, overrides = parse_argv(argv)
        unknown = set(flags) - KNOWN_FLAGS
        if unknown:
            raise ConfigError(f"unknown flag(s) {sorted('--' + u for u in unknown)}; {USAGE}")
        if "config" not in flags or "workdir" not in flags:
            raise ConfigError(f"--config and --workdir are required; {USAGE}")
        config = load_config(flags["config"])
        apply_overrides(config, overrides)
        from seedjax.train.validate import validate_config

        validate_config(config)
        stop_at = int(flags.get("stop_at_step", 0))
    except (ConfigError, ValueError) as e:
        print(f"seedjax: error: {e}", file=sys.stderr)
        return 2

    from seedjax.parallel.mesh import maybe_initialize_distributed

    maybe_initialize_distributed(
        flags.get("coordinator_address", ""),
        int(flags.get("num_processes", 0)),
        int(flags.get("process_id", -1)),
    )
    from seedjax.train import loop

    return loop.run(config, flags["workdir"], stop_at_step=stop_at)


if __name__ == "__main__":
    sys.exit(main())
