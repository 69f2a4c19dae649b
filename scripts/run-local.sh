#!/usr/bin/env bash
# Install allq, generate a key set (once), and run one server and one client on
# localhost until Ctrl-C. The REST API is then at http://127.0.0.1:8090.
#   SERVER_PORT (5555) and HTTP_SERVER_PORT (8090) choose the ports; state lives in ./run/.
#   ALLQ_VENV names an existing virtualenv with allq installed to use instead of running
#   scripts/bootstrap.sh. Several servers and clients: scripts/run-federation.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${ALLQ_VENV:-}" ]; then
  VENV=$ALLQ_VENV   # an existing virtualenv with allq installed: no bootstrap
else
  scripts/bootstrap.sh
  VENV=.venv
fi
mkdir -p run
[ -f run/keys/server.key ] || "$VENV/bin/allq" keys generate run/keys >/dev/null
SERVER_PORT=${SERVER_PORT:-5555}
HTTP_SERVER_PORT=${HTTP_SERVER_PORT:-8090}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait; }
trap cleanup EXIT INT TERM

"$VENV/bin/twistd" -n --pidfile= allq-server --keys run/keys \
  --listen "tcp:$SERVER_PORT:interface=127.0.0.1" >run/server.log 2>&1 &
pids+=($!)
"$VENV/bin/twistd" -n --pidfile= allq-client --keys run/keys \
  --servers "127.0.0.1:$SERVER_PORT" --http "tcp:$HTTP_SERVER_PORT:interface=127.0.0.1" \
  >run/client.log 2>&1 &
pids+=($!)

for _ in $(seq 100); do
  if curl -fs "http://127.0.0.1:$HTTP_SERVER_PORT/health" >/dev/null 2>&1; then break; fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "allq failed to start:"; tail -n 20 run/*.log; exit 1; }
  done
  sleep 0.2
done
cat <<MSG
allq is running: server 127.0.0.1:$SERVER_PORT, REST client http://127.0.0.1:$HTTP_SERVER_PORT
(logs in run/server.log and run/client.log; Ctrl-C stops both). Try:

  curl -s -XPOST localhost:$HTTP_SERVER_PORT/job -H 'content-type: application/json' -d '{"tube":"default","body":"hello"}'
  curl -s 'localhost:$HTTP_SERVER_PORT/job?tube=default'
  curl -s -XDELETE 'localhost:$HTTP_SERVER_PORT/job?job_id=<id from the get>'
  curl -s localhost:$HTTP_SERVER_PORT/stats
MSG
wait -n "${pids[@]}"
