#!/usr/bin/env bash
# A local Docker engine and a Debian bookworm + Python base image, for scripts/image-test.sh.
#
#   scripts/docker-engine.sh check [STATE_DIR]  # exit 0 if this machine can run it; else
#                                               # print why (and how to enable it), exit 3
#   scripts/docker-engine.sh start [STATE_DIR]  # prints: export DOCKER_HOST=...  and  BASE=...
#   scripts/docker-engine.sh stop  [STATE_DIR]  # stops the engine that `start` started
#
# STATE_DIR (default $ALLQ_DOCKER_STATE, else /tmp/allq-docker) holds the engine's socket,
# pid file, log, images and build cache; later starts reuse it (the first takes ~1.5 min:
# apt-get and debootstrap). Needs Linux and root; the tools (docker.io, debootstrap,
# iptables) are apt-get installed when missing, so on a machine without them, Debian (or
# Ubuntu) with access to its package mirror.
#
# Why an engine of our own, and this way:
# * The engine must not depend on one being installed and running: dockerd is started here,
#   with its state under STATE_DIR, and stopped again by `stop`.
# * The vfs storage driver works everywhere (inside containers and VMs without overlayfs
#   support), at the cost of a full copy per layer: the image test prunes what it leaves.
# * No default bridge, no iptables rules: nothing claims a private subnet or touches the
#   host's firewall. Containers run with host networking on distinct 127.0.0.1 ports
#   (docker/*.host.yml), so the test's traffic stays on loopback.
# * The base image is built from Debian's own mirror with debootstrap (python3, venv,
#   ca-certificates) instead of being pulled from Docker Hub, which CI machines may not
#   reach. The Dockerfiles take it as their PYTHON_IMAGE build argument; users keep the
#   default python:3.11-slim.
set -euo pipefail
cmd=${1:-start}
STATE=${2:-${ALLQ_DOCKER_STATE:-/tmp/allq-docker}}
BASE=allq-local/python:3.11-bookworm
SOCK=$STATE/docker.sock
TOOLS=(dockerd docker debootstrap iptables)
export DOCKER_HOST=unix://$SOCK
START_WAIT=30        # seconds dockerd may take to answer
STOP_WAIT=20         # seconds dockerd may take to exit on SIGTERM

say() { echo "docker-engine: $*" >&2; }

missing_tools() {
  local tool
  for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || echo "$tool"
  done
}

# Why this machine cannot run the engine (one line, with how to enable it), or nothing.
cannot_run() {
  local missing
  missing=$(missing_tools)
  missing=${missing//$'\n'/ }
  if [ "$(uname -s)" != Linux ]; then
    echo "the local Docker engine needs Linux (this is $(uname -s)); run the image test on a Linux machine"
  elif [ "$(id -u)" != 0 ]; then
    echo "the local Docker engine (dockerd) needs root; run as root (e.g. sudo scripts/image-test.sh, or the test suite as root)"
  elif [ -n "$missing" ] && ! command -v apt-get >/dev/null 2>&1; then
    echo "missing $missing and no apt-get to install them; install docker.io (dockerd and docker), debootstrap and iptables, or run on Debian/Ubuntu"
  fi
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

stop() {
  if [ -f "$STATE/dockerd.pid" ]; then
    local pid
    pid=$(cat "$STATE/dockerd.pid")
    # Only the dockerd that this state directory's pid file names, and only if it is one.
    if [ -n "$pid" ] && grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq $((STOP_WAIT * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && { say "dockerd $pid did not stop within ${STOP_WAIT}s"; exit 1; }
    fi
    rm -f "$STATE/dockerd.pid"
  fi
  umount "$STATE/exec/netns/default" 2>/dev/null || true
}

case "$cmd" in
  check)
    reason=$(cannot_run)
    if [ -n "$reason" ]; then echo "$reason"; exit 3; fi
    exit 0 ;;
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "usage: scripts/docker-engine.sh check|start|stop [STATE_DIR]" >&2; exit 2 ;;
esac

reason=$(cannot_run)
[ -z "$reason" ] || { say "$reason"; exit 3; }
mkdir -p "$STATE"

mapfile -t need < <(missing_tools)
if [ ${#need[@]} -gt 0 ]; then
  packages=()
  for tool in "${need[@]}"; do
    case "$tool" in dockerd|docker) packages+=(docker.io) ;; *) packages+=("$tool") ;; esac
  done
  mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
  say "installing ${packages[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}"; } \
    >"$STATE/apt.log" 2>&1 || { tail -n 20 "$STATE/apt.log" >&2; say "apt-get install failed"; exit 1; }
fi

if ! engine_answers; then
  stop   # a stale pid file or network namespace mount from a run that died
  dockerd --storage-driver=vfs --data-root="$STATE/root" --exec-root="$STATE/exec" \
    -H "unix://$SOCK" --pidfile="$STATE/dockerd.pid" \
    --bridge=none --iptables=false --ip-masq=false >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq $((START_WAIT * 5))); do engine_answers && break; sleep 0.2; done
  engine_answers || { tail -n 20 "$STATE/dockerd.log" >&2; say "dockerd did not answer within ${START_WAIT}s; see $STATE/dockerd.log"; exit 1; }
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  say "building $BASE with debootstrap (once per STATE_DIR)"
  rootfs=$STATE/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STATE/debootstrap.log" >&2; say "debootstrap failed"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi

echo "export DOCKER_HOST=$DOCKER_HOST"
echo "BASE=$BASE"
