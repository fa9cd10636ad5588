#!/usr/bin/env bash
# Set up everything jasmin-credits needs on a Debian 12 machine, idempotently:
# redis-server and rabbitmq-server (Debian packages, not started here: the gateway
# command and the tests start their own on loopback), and a virtualenv in .venv with
# Jasmin 0.11.1 and this package installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
  # Debian may start the system-wide services on install: we run our own instances.
  for svc in redis-server rabbitmq-server; do
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import jasmin_credits, jasmin, pytest, smpplib, hypothesis' 2>/dev/null \
   || [ setup.cfg -nt .venv/.installed ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
  touch .venv/.installed
fi
