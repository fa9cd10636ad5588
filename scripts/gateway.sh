#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), then run a complete local gateway with credits:
# redis-server, rabbitmq-server, an SMSC simulator and Jasmin through our launcher, with
# the example config (config/credits.yaml) and a demo user. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m jasmin_credits.localgateway --credits-config config/credits.yaml "$@"
