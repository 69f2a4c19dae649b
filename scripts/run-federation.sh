#!/usr/bin/env bash
# Install allq, generate a key set (once), and run a federation on localhost until Ctrl-C:
# three servers and two clients, every client using every server. A job put through one
# client can be got through the other.
#
#   scripts/run-federation.sh
#
#   SERVER_PORTS ("5555 5556 5557") and HTTP_PORTS ("8090 8091") choose the ports (as many
#   servers and clients as ports given); state (keys, logs) lives in ALLQ_RUN_DIR
#   (./run/federation). ALLQ_VENV names an existing virtualenv with allq installed to use
#   instead of running scripts/bootstrap.sh. Ctrl-C (or SIGTERM) stops every daemon; so
#   does one daemon exiting.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_PORTS=${SERVER_PORTS:-5555 5556 5557}
HTTP_PORTS=${HTTP_PORTS:-8090 8091}
RUN=${ALLQ_RUN_DIR:-run/federation}
if [ -n "${ALLQ_VENV:-}" ]; then
  VENV=$ALLQ_VENV
else
  scripts/bootstrap.sh
  VENV=.venv
fi
mkdir -p "$RUN"
[ -f "$RUN/keys/server.key" ] || "$VENV/bin/allq" keys generate "$RUN/keys" >/dev/null

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait
}
trap cleanup EXIT
trap 'exit 130' INT TERM

servers=()
n=0
for port in $SERVER_PORTS; do
  n=$((n + 1))
  "$VENV/bin/twistd" -n --pidfile= allq-server --keys "$RUN/keys" \
    --listen "tcp:$port:interface=127.0.0.1" >"$RUN/server$n.log" 2>&1 &
  pids+=($!)
  servers+=("127.0.0.1:$port")
done
server_string=$(IFS=,; echo "${servers[*]}")
n=0
for port in $HTTP_PORTS; do
  n=$((n + 1))
  # Each client its own JSON-lines port (7766, 7767, ...) and socket: two on the
  # defaults would collide (ALLQ_JSONL / ALLQ_UNIX_SOCKET, e.g. none, override).
  ALLQ_JSONL="${ALLQ_JSONL:-tcp:$((7765 + n)):interface=127.0.0.1}" \
  ALLQ_UNIX_SOCKET="${ALLQ_UNIX_SOCKET:-$RUN/client$n.sock}" \
  "$VENV/bin/twistd" -n --pidfile= allq-client --keys "$RUN/keys" \
    --servers "$server_string" --http "tcp:$port:interface=127.0.0.1" \
    >"$RUN/client$n.log" 2>&1 &
  pids+=($!)
done

# Ready once every client reports every server up (bounded: 20 s).
for port in $HTTP_PORTS; do
  for _ in $(seq 100); do
    if curl -fs "http://127.0.0.1:$port/health" 2>/dev/null | grep -Eq "\"up\":${#servers[@]}[,}]"; then
      break
    fi
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "allq failed to start:"; tail -n 5 "$RUN"/*.log; exit 1; }
    done
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/health" 2>/dev/null | grep -Eq "\"up\":${#servers[@]}[,}]" \
    || { echo "client on $port does not see all servers:"; tail -n 5 "$RUN"/*.log; exit 1; }
done

read -r first second _ <<<"$HTTP_PORTS"
second=${second:-$first}
cat <<MSG
allq federation is running: servers ${servers[*]}; REST clients on ports $HTTP_PORTS
(logs in $RUN/; Ctrl-C stops everything). Try:

  curl -s -XPOST localhost:$first/job -H 'content-type: application/json' -d '{"tube":"default","body":"hello"}'
  curl -s 'localhost:$second/job?tube=default&delete=true'
  curl -s localhost:$second/health
MSG
wait -n "${pids[@]}"
echo "a daemon exited; stopping the others (logs in $RUN/)" >&2
exit 1
