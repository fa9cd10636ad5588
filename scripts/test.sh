#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), then run the whole test suite. The tests start
# their own redis-server and rabbitmq-server on loopback and stop them at the end.
# Extra arguments go to pytest, e.g. scripts/test.sh -k store
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
