#!/usr/bin/env bash
# Image test: build both images offline on the local Debian+Python base and run the
# federated compose stack with host networking, end to end. Needs Linux and root: it starts
# a local Docker engine with scripts/docker-engine.sh, which apt-get installs docker.io,
# debootstrap and iptables when missing (`scripts/docker-engine.sh check` says whether this
# machine can, and why not).
#
#   scripts/image-test.sh    # 3-5 min; the first run on a machine 5-6.5 min (engine install)
#
# Checks, in order:
#  1. the wheelhouse (`pip wheel -w wheelhouse .`) and both images build with no network
#     (compose's BuildKit builder, build argument PYTHON_IMAGE = the local base);
#  2. the images run as a non-root user, with a HEALTHCHECK and STOPSIGNAL SIGTERM;
#  3. docker/gen-env.sh gets a key set from the server image (CONFIG_ONLY=true);
#  4. the federated stack (3 servers, 2 clients, 127.0.0.1 ports) comes up healthy; a job
#     put through one client is got through the other; puts spread over all 3 servers;
#  5. after `docker kill` of one server, puts through both clients keep succeeding, on the
#     other servers, and every one of those jobs can be got;
#  6. a server started without keys exits 1 and logs a suggested key set; one with
#     AllQueue's key variables only exits 1 naming the any-client switch;
#  7. `docker stop` of every remaining container exits 0 well within the grace period, and
#     each one's log shows twistd's orderly shutdown; no container logged a plugin cache
#     or permission error, or a traceback.
# The stack is always torn down (volumes too), and the engine is stopped if this script
# started it. Every wait is bounded. Set ALLQ_DOCKER_STATE to use another engine state dir.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ENGINE="$HERE/docker-engine.sh"
cd "$HERE/.."
PY=.venv/bin/python
STATE=${ALLQ_DOCKER_STATE:-/tmp/allq-docker}
PROJECT=allq-imagetest-$$
SERVER_IMAGE=allq-server:imagetest
CLIENT_IMAGE=allq-client:imagetest
STOP_GRACE=30   # seconds docker stop waits before SIGKILL
T0=$SECONDS

step() { printf '[image-test %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
fail() { printf '[image-test %3ds] FAILED: %s\n' "$((SECONDS - T0))" "$*" >&2; exit 1; }

reason=$(bash "$ENGINE" check "$STATE") || fail "$reason"
[ -x "$PY" ] || scripts/bootstrap.sh
COMPOSE=$(scripts/docker-checks.sh --install)

# One image test per engine at a time: a second would share its images and ports.
mkdir -p "$(dirname "$STATE")"
exec 9>"$STATE.lock"
flock -w 420 9 || fail "another image test holds $STATE.lock"

export DOCKER_HOST="unix://$STATE/docker.sock"
started_engine=0
work=$(mktemp -d)
stack=()   # compose arguments, set once the stack is configured

cleanup() {
  local rc=$?
  set +e
  if [ ${#stack[@]} -gt 0 ]; then
    if [ "$rc" -ne 0 ]; then
      echo "---- stack logs (last 60 lines each) ----"
      timeout 60 "$COMPOSE" "${stack[@]}" logs --no-color --tail 60
    fi
    step "tearing down the stack"
    timeout 120 "$COMPOSE" "${stack[@]}" down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 \
      || echo "image-test: compose down failed" >&2
  fi
  if timeout 10 docker info >/dev/null 2>&1; then
    step "pruning older images and build cache"
    # Keep this run's images and build cache (the next run's cache) and drop older ones:
    # with the vfs driver every layer is a full copy of the image, so they add up fast.
    timeout 120 docker image prune --force >/dev/null 2>&1
    timeout 120 docker builder prune --force --filter "until=$((SECONDS - T0 + 60))s" >/dev/null 2>&1
  fi
  if [ "$started_engine" = 1 ]; then
    step "stopping the engine"
    timeout 60 bash "$ENGINE" stop "$STATE" >/dev/null 2>&1 || echo "image-test: engine stop failed" >&2
  fi
  rm -rf "$work"
  step "done (status $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- 1. engine, wheelhouse, images -------------------------------------------------------
if ! timeout 10 docker info >/dev/null 2>&1; then
  started_engine=1
fi
step "starting the local engine ($STATE)"
engine_out=$(timeout 420 bash "$ENGINE" start "$STATE") || fail "docker-engine.sh start failed"
BASE=$(sed -n 's/^BASE=//p' <<<"$engine_out")
[ -n "$BASE" ] || fail "docker-engine.sh printed no BASE image: $engine_out"

step "building the wheelhouse"
rm -rf wheelhouse
timeout 300 "$PY" -m pip wheel --quiet --disable-pip-version-check -w wheelhouse . \
  >"$work/wheel.log" 2>&1 || { grep -v "^WARNING: Location" "$work/wheel.log"; fail "pip wheel failed"; }

export ALLQ_PYTHON_IMAGE="$BASE" ALLQ_WHEELHOUSE=wheelhouse ALLQ_BUILD_NETWORK=none
export COMPOSE_BAKE=false   # no buildx here: compose builds with its own BuildKit client
export ALLQ_SERVER_IMAGE="$SERVER_IMAGE" ALLQ_CLIENT_IMAGE="$CLIENT_IMAGE"
# A killed server must stay down for the failover check; probe health every second.
export ALLQ_RESTART=no ALLQ_HEALTHCHECK_INTERVAL=1s
read -r ALLQ_SERVER1_PORT ALLQ_SERVER2_PORT ALLQ_SERVER3_PORT ALLQ_CLIENT1_PORT ALLQ_CLIENT2_PORT \
  ALLQ_CLIENT1_JSONL_PORT ALLQ_CLIENT2_JSONL_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
export ALLQ_SERVER1_PORT ALLQ_SERVER2_PORT ALLQ_SERVER3_PORT ALLQ_CLIENT1_PORT ALLQ_CLIENT2_PORT \
  ALLQ_CLIENT1_JSONL_PORT ALLQ_CLIENT2_JSONL_PORT
touch "$work/env"
stack=(-p "$PROJECT" --env-file "$work/env" -f docker/federated.yml -f docker/federated.host.yml)

step "building $SERVER_IMAGE and $CLIENT_IMAGE (network none, base $BASE)"
timeout 600 "$COMPOSE" --progress quiet "${stack[@]}" build server1 client1 >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log"; fail "image build failed"; }

# -- 2. image settings -------------------------------------------------------------------
for image in "$SERVER_IMAGE" "$CLIENT_IMAGE"; do
  read -r user stopsignal health < <(docker image inspect \
    -f '{{.Config.User}} {{.Config.StopSignal}} {{if .Config.Healthcheck}}{{index .Config.Healthcheck.Test 0}}{{end}}' \
    "$image")
  case "$user" in ""|0|0:*|root|root:*) fail "$image runs as root (USER '$user')" ;; esac
  [ "$stopsignal" = SIGTERM ] || fail "$image has STOPSIGNAL '$stopsignal'"
  [ "$health" = CMD ] || fail "$image has no HEALTHCHECK"
  step "$image: user $user, stop signal $stopsignal, healthcheck set"
done

# -- 3. keys: the key set the server image suggests, as docker/gen-env.sh writes it -------
step "keys from docker/gen-env.sh"
timeout 120 docker/gen-env.sh "$SERVER_IMAGE" >"$work/env" || fail "docker/gen-env.sh failed"
# The clients' admin token, for the checks' REST calls.
ALLQ_ADMIN_TOKEN=$(sed -n 's/^ALLQ_ADMIN_TOKEN=//p' "$work/env")
[ -n "$ALLQ_ADMIN_TOKEN" ] || fail "docker/gen-env.sh wrote no ALLQ_ADMIN_TOKEN"
export ALLQ_ADMIN_TOKEN

# -- 4-5. the federated stack ------------------------------------------------------------
step "starting the federated stack (servers on $ALLQ_SERVER1_PORT $ALLQ_SERVER2_PORT $ALLQ_SERVER3_PORT, clients on $ALLQ_CLIENT1_PORT $ALLQ_CLIENT2_PORT)"
timeout 400 "$COMPOSE" "${stack[@]}" up --detach --no-build --wait --wait-timeout 360 \
  >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "the stack did not become healthy"; }
server1=$("$COMPOSE" "${stack[@]}" ps --quiet server1)
[ -n "$server1" ] || fail "no server1 container"

step "end to end: put, get across clients, spread, kill server1, failover"
SERVER1_CONTAINER=$server1 timeout 180 "$PY" - <<'EOF' || fail "end-to-end checks failed"
import json, os, subprocess, time, urllib.error, urllib.parse, urllib.request

CLIENTS = [f"http://127.0.0.1:{os.environ[f'ALLQ_CLIENT{n}_PORT']}" for n in (1, 2)]
TUBE = "imagetest"

def call(method, base, path, params=None, body=None, timeout=20):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {os.environ['ALLQ_ADMIN_TOKEN']}"}
    if data is not None:
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")

def put(base, body):
    status, reply = call("POST", base, "/job", body={"tube": TUBE, "body": body, "ttl": 60})
    assert status == 200 and "job_id" in reply, f"put via {base}: {status} {reply}"
    return reply["job_id"]

def get(base):
    status, reply = call("GET", base, "/job", {"tube": TUBE, "delete": "true", "wait": 5})
    assert status == 200 and reply, f"get via {base}: {status} {reply}"
    return reply

def server_of(job_id):
    return job_id.partition(",")[0]

# Both clients are healthy once one server is up: wait until they use all three.
deadline = time.monotonic() + 30
for base in CLIENTS:
    while not isinstance(health := call("GET", base, "/health")[1], dict) or health["up"] != 3:
        assert time.monotonic() < deadline, f"{base}/health: {health}"
        time.sleep(0.2)

# A job put through client1 is got through client2.
job_id = put(CLIENTS[0], "hello across clients")
job = get(CLIENTS[1])
assert (job["id"], job["body"]) == (job_id, "hello across clients"), job
print("put via client1, got via client2:", job_id)

# Puts are spread over all three servers; client2 finds every one of them.
ids = [put(CLIENTS[0], f"spread {n}") for n in range(6)]
assert {server_of(i) for i in ids} == {"server1", "server2", "server3"}, ids
got = {get(CLIENTS[1])["id"] for _ in ids}
assert got == set(ids), (got, ids)
print("6 puts over", sorted({server_of(i) for i in ids}), "all got via client2")

# Kill server1: puts through both clients keep succeeding, on the other two servers.
# Put once the process is gone (docker wait), before the clients may have noticed: a
# put that meets the dead connection must be retried on another server.
for command in (["docker", "kill"], ["docker", "wait"]):
    subprocess.run(command + [os.environ["SERVER1_CONTAINER"]], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
killed = time.monotonic()
ids = [put(CLIENTS[n % 2], f"after kill {n}") for n in range(12)]
print(f"12 puts after the kill in {time.monotonic() - killed:.1f} s, on",
      sorted({server_of(i) for i in ids}))
assert "server1" not in {server_of(i) for i in ids}, ids
got = {get(CLIENTS[n % 2])["id"] for n in range(len(ids))}
assert got == set(ids), (got, ids)
status, health = call("GET", CLIENTS[0], "/health")
assert status == 200 and health["up"] == 2 and health["total"] == 3, (status, health)
print("all got back; client1 /health:", health["up"], "of", health["total"], "servers up")
EOF

# -- 6. no keys: the image's server refuses to start and logs a suggested key set --------
# Run in the live server2 container (a new container costs a full copy of the image on the
# local engine's vfs driver), with the keys emptied as an unset compose variable leaves them.
step "server without keys"
set +e
timeout 60 docker exec -e A_CURVE_SECRETKEY= -e ALLQ_AUTHORIZED_KEYS= \
  "$("$COMPOSE" "${stack[@]}" ps --quiet server2)" twistd --nodaemon --pidfile= allq-server \
  >"$work/nokeys.log" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || { cat "$work/nokeys.log"; fail "a server without keys exited $rc, not 1"; }
grep -q "refusing to start without keys" "$work/nokeys.log" \
  && docker/gen-env.sh - <"$work/nokeys.log" >/dev/null \
  || { cat "$work/nokeys.log"; fail "a server without keys did not log a suggested key set"; }

# AllQueue's key variables alone (a secret, no client list): refused, naming the switch.
server_secret=$(sed -n 's/^SERVER_A_CURVE_SECRETKEY=//p' "$work/env")
set +e
timeout 60 docker exec -e A_CURVE_SECRETKEY="$server_secret" -e ALLQ_AUTHORIZED_KEYS= \
  "$("$COMPOSE" "${stack[@]}" ps --quiet server2)" twistd --nodaemon --pidfile= allq-server \
  >"$work/noclients.log" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] && grep -q "ALLQ_AUTHORIZED_KEYS=\* or --allow-any-client" "$work/noclients.log" \
  || { cat "$work/noclients.log"; fail "a server without client keys exited $rc without naming the switch"; }

# -- 7. graceful stops -------------------------------------------------------------------
for service in client1 client2 server2 server3; do
  container=$("$COMPOSE" "${stack[@]}" ps --quiet "$service")
  [ -n "$container" ] || fail "no $service container"
  started=$SECONDS
  timeout $((STOP_GRACE + 30)) docker stop --time "$STOP_GRACE" "$container" >/dev/null \
    || fail "docker stop $service failed"
  took=$((SECONDS - started))
  [ "$took" -lt $((STOP_GRACE - 5)) ] || fail "$service took ${took}s to stop (killed at the grace period?)"
  exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
  logs=$(docker logs "$container" 2>&1)
  grep -q "Received SIGTERM" <<<"$logs" && grep -q "Server Shut Down" <<<"$logs" \
    || { echo "$logs" | tail -n 20; fail "$service shows no orderly shutdown"; }
  step "docker stop $service: exit status 0 after ${took}s; container exit code $exit_code; orderly shutdown logged"
done
for service in server1 server2 server3 client1 client2; do
  container=$("$COMPOSE" "${stack[@]}" ps --all --quiet "$service")
  if docker logs "$container" 2>&1 | grep -E -i "plugin cache|permission denied|Traceback|Unhandled"; then
    fail "$service logged the errors above"
  fi
done
step "all checks passed"
