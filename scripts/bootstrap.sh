#!/usr/bin/env bash
# Create .venv (if needed) and install allq into it, editable, from this checkout.
#
#   scripts/bootstrap.sh          # what running needs: allq and its dependencies (PyPI)
#   scripts/bootstrap.sh --test   # also the test and bench extras, and the Debian chromium
#                                 # that the dashboard test drives through Playwright
#   scripts/bootstrap.sh --bench  # the bench extra and Debian's redis-server, the broker of
#                                 # the Dramatiq peer in bench/peers.py (no test needs it)
#
# The editable install puts src/ on the venv's sys.path, where twistd finds the plugins in
# src/twisted/plugins: `.venv/bin/twistd -n --pidfile= allq-server` works from any folder,
# with no PYTHONPATH. Idempotent: a second run only re-installs the project itself.
# Needs python3 (3.11+) with its venv module, and access to PyPI (or a pip mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CHROMIUM=${ALLQ_CHROMIUM:-/usr/bin/chromium}
case "${1:-}" in
  "") extras= ;;
  --test) extras='[test,bench]' ;;
  --bench) extras='[bench]' ;;
  *) echo "usage: scripts/bootstrap.sh [--test|--bench]" >&2; exit 2 ;;
esac

install_redis() {
  # bench/peers.py starts its own redis-server on a free loopback port.
  command -v redis-server >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian's redis-server for bench/peers.py" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
             redis-server >/dev/null; }; then
      echo "bootstrap: apt-get could not install redis-server: bench/peers.py" \
           "will measure allq alone" >&2
    fi
  else
    echo "bootstrap: redis-server is missing and apt-get cannot run here (not Debian, or" \
         "not root): install it yourself for bench/peers.py's Dramatiq peer" >&2
  fi
}

install_chromium() {
  # Playwright's Python package drives this browser through executable_path; its own
  # `playwright install` (which downloads browser builds) is never run.
  [ -x "$CHROMIUM" ] && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian's chromium for the dashboard browser test" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
             chromium fonts-dejavu-core >/dev/null; }; then
      echo "bootstrap: apt-get could not install chromium: tests/test_dashboard.py" \
           "will fail under CI=true and be skipped otherwise" >&2
    fi
  else
    echo "bootstrap: $CHROMIUM is missing and apt-get cannot run here (not Debian, or" \
         "not root): install the chromium package yourself, or set ALLQ_CHROMIUM." \
         "Without it tests/test_dashboard.py fails under CI=true and is skipped" \
         "otherwise." >&2
  fi
}

if [ "${1:-}" = --test ]; then
  install_chromium
elif [ "${1:-}" = --bench ]; then
  install_redis
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
.venv/bin/pip install --quiet -e ".$extras"
