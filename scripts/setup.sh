#!/usr/bin/env bash
# Set up everything jasmin-credits needs on a Debian 12 machine, idempotently:
# redis-server and rabbitmq-server (Debian packages, not started here: the gateway
# command and the tests start their own on loopback), prometheus for its promtool (the
# tests check deploy/prometheus's alerting rules with it; no Prometheus server runs), and
# a virtualenv in .venv with Jasmin 0.11.1 and this package installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  # Debian starts a package's service on install, listening on every interface for
  # Prometheus: forbid that while installing (policy-rc.d), unless the machine has its
  # own policy already.
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
  # (in case a service started all the same: we run our own instances)
  for svc in redis-server rabbitmq-server prometheus; do
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
