#!/usr/bin/env bash
# Install everything the tests need (scripts/bootstrap.sh --test: allq, the test and bench
# extras, Debian's chromium when root on Debian), then run the whole suite. Extra args go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
exec .venv/bin/python -m pytest "$@"
