#!/usr/bin/env bash
# Create .venv (if needed) and install allq with its test and bench extras into it, plus
# the Debian chromium that the dashboard test drives through Playwright.
# Idempotent: a second run only re-installs the project itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CHROMIUM=${ALLQ_CHROMIUM:-/usr/bin/chromium}

# Playwright's Python package drives this browser through executable_path; its own
# `playwright install` (which downloads browser builds) is never run.
if [ ! -x "$CHROMIUM" ]; then
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
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
.venv/bin/pip install --quiet -e '.[test,bench]'
