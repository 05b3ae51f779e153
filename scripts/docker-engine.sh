#!/usr/bin/env bash
# A private Docker engine inside its own network namespace, for tests and the demo on machines
# where no engine runs (docs: ../shared/ENVIRONMENT.md "Docker and Compose").
#
#   scripts/docker-engine.sh start NAME   start (or reuse) engine NAME; prints DOCKER_HOST=...
#   scripts/docker-engine.sh env NAME     prints DOCKER_HOST=... for a running engine
#   scripts/docker-engine.sh exec NAME CMD...
#                                         run CMD inside the engine's network namespace (where its
#                                         published ports and container networks are reachable)
#   scripts/docker-engine.sh stop NAME    stop the engine and delete its namespace; images are kept
#   scripts/docker-engine.sh purge NAME   stop, then delete its images and state too
#
# The namespace has only `lo` and no default route, so containers and tests inside it cannot send
# traffic off the machine. The engine's state lives in $MOOSENG_DOCKER_STATE/NAME (default
# /var/lib/mooseng-docker/NAME) so that images built once are reused by later runs.
set -euo pipefail

STATE_BASE=${MOOSENG_DOCKER_STATE:-/var/lib/mooseng-docker}
RUN_BASE=/run/mooseng-docker

die() {
    printf 'docker-engine.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
name=$2
shift 2
[[ "$name" =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}$ ]] || die "engine name '$name' must be 1-31 letters, digits, '.', '_' or '-'"

netns="mooseng-docker-$name"
state="$STATE_BASE/$name"
run="$RUN_BASE/$name"
sock="$run/docker.sock"
pidfile="$run/dockerd.pid"
log="$state/dockerd.log"
host="unix://$sock"

running() {
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
    DOCKER_HOST=$host timeout 10 docker info >/dev/null 2>&1
}

start() {
    command -v dockerd >/dev/null || die "dockerd not found: apt-get install -y --no-install-recommends docker.io docker-compose iptables"
    command -v docker >/dev/null || die "docker client not found: apt-get install -y --no-install-recommends docker.io"
    [ "$(id -u)" -eq 0 ] || die "a private engine needs root (network namespace, overlay mounts)"
    if running && answers; then
        echo "DOCKER_HOST=$host"
        return
    fi
    running && kill "$(cat "$pidfile")" 2>/dev/null && sleep 1
    mkdir -p "$state/data" "$run/exec"
    ip netns list | grep -qw "^$netns" || ip netns add "$netns"
    ip -n "$netns" link set lo up
    # nsenter, not `ip netns exec`: the latter remounts /sys and dockerd fails with
    # "Devices cgroup isn't mounted".
    nsenter --net="/run/netns/$netns" dockerd \
        --data-root "$state/data" --exec-root "$run/exec" -H "$host" --pidfile "$pidfile" \
        --storage-driver overlay2 >>"$log" 2>&1 &
    for _ in $(seq 1 60); do
        if answers; then
            echo "DOCKER_HOST=$host"
            return
        fi
        sleep 0.5
    done
    tail -n 20 "$log" >&2 || true
    die "engine '$name' did not answer within 30 s (log: $log)"
}

stop() {
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            DOCKER_HOST=$host timeout 60 docker ps -q 2>/dev/null | xargs -r env DOCKER_HOST="$host" timeout 60 docker rm -f >/dev/null 2>&1 || true
            kill "$pid"
            for _ in $(seq 1 40); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.5
            done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
        rm -f "$pidfile"
    fi
    # Mounts the engine left under its exec root would keep the namespace busy.
    grep -o " $run/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    ip netns list | grep -qw "^$netns" && ip netns delete "$netns"
    return 0
}

case "$cmd" in
start) start ;;
env)
    answers || die "engine '$name' is not running (start it: $0 start $name)"
    echo "DOCKER_HOST=$host"
    ;;
exec)
    [ $# -ge 1 ] || usage
    exec nsenter --net="/run/netns/$netns" "$@"
    ;;
stop) stop ;;
purge)
    stop
    rm -rf "$state" "$run"
    ;;
*) usage ;;
esac
