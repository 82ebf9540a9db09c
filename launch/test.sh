#!/usr/bin/env bash
# Create the environment if missing, install seedjax with its test extras, run the test suite.
# Extra arguments go to pytest (e.g. `bash launch/test.sh tests/test_config.py -x`).
source "$(dirname "$0")/env.sh" test
set +e
workers="${SEEDJAX_TEST_WORKERS:-2}"
# Whole files per worker: a module's shared end-to-end run (a module-scoped fixture) is built
# once, where xdist's default round-robin would build it on every worker. Files go out in the
# order tests/conftest.py sorts them (longest first), not xdist's by-test-count order.
python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder --durations=25 "${@:-tests}"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "seedjax: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
