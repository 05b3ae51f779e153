#!/usr/bin/env bash
# End-to-end test of the Docker deployment: builds everything offline, brings the seed topology
# (docker-compose.yml) up, runs the seed README's "Testing" section with byte-exact checks, kills
# the leading master and checks that another one takes over, then tears everything down (also on
# failure). Exit status 0 only if every step passed.
#
# Engine: MOOSENG_DOCKER_ENGINE=NAME uses the private engine NAME (scripts/docker-engine.sh: its
# own network namespace), starting it if needed. Otherwise the engine at DOCKER_HOST (or the
# default socket) when it answers; with no DOCKER_HOST and no engine, the private engine
# test-docker-setup. An engine this script started is stopped at the end; its images stay cached
# for the next run. A DOCKER_HOST that does not answer is an error, not a reason to start another.
# Knobs: MOOSENG_SKIP_INSTALL=1 (no scripts/install.sh), MOOSENG_PYTHON, MOOSENG_KEEP=1 (leave the
# cluster running for inspection), MOOSENG_FAILOVER_TIMEOUT_S (default 30).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ENGINE_SH="$REPO_DIR/scripts/docker-engine.sh"
FAILOVER_TIMEOUT_S=${MOOSENG_FAILOVER_TIMEOUT_S:-30}
DEMO="$REPO_DIR/demo-unified-cluster.sh"
MiB=$((1024 * 1024))

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'test-docker-setup.sh: %s\n' "$*" >&2
    exit 1
}
fail() {
    printf 'TEST FAILED: %s\n' "$*" >&2
    exit 1
}
# shellcheck source=scripts/docker-demo.sh
. "$REPO_DIR/scripts/docker-demo.sh"

STARTED_ENGINE=""
teardown() {
    local rc=$?
    trap - EXIT
    if [[ "${MOOSENG_KEEP:-0}" == 1 ]]; then
        say "MOOSENG_KEEP=1: leaving the cluster up (DOCKER_HOST=${DOCKER_HOST:-})"
        exit "$rc"
    fi
    if ((rc != 0)) && docker_reachable; then
        say "Failed: the services' last log lines"
        dc logs --no-color --tail=15 2>&1 || true
    fi
    say "Tearing down"
    if docker_reachable; then
        MOOSENG_RUNTIME=docker "$DEMO" cleanup || rc=1
    fi
    if [[ -n "$STARTED_ENGINE" ]]; then
        "$ENGINE_SH" stop "$STARTED_ENGINE" || rc=1
    fi
    if ((rc == 0)); then
        say "test-docker-setup.sh: all checks passed"
    else
        say "test-docker-setup.sh: FAILED (exit $rc)"
    fi
    exit "$rc"
}

use_engine() {
    local name=${MOOSENG_DOCKER_ENGINE:-}
    if [[ -z "$name" ]]; then
        if docker_reachable; then
            say "Using the Docker engine at ${DOCKER_HOST:-unix:///var/run/docker.sock}"
            require_engine
            return
        fi
        if [[ -n "${DOCKER_HOST:-}" ]]; then
            hint_engine >&2
            exit 1
        fi
        name=test-docker-setup
        say "No Docker engine reachable: using a private one in its own network namespace"
    fi
    if ! "$ENGINE_SH" env "$name" >/dev/null 2>&1; then
        say "Starting the private engine $name (scripts/docker-engine.sh)"
        STARTED_ENGINE=$name
    fi
    export "$("$ENGINE_SH" start "$name")"
    require_engine
}

# wait_for_leader EXCLUDE TIMEOUT_S: the number of the one master that leads, other than EXCLUDE;
# fails when none or several lead for TIMEOUT_S.
wait_for_leader() {
    local exclude=$1 deadline=$((SECONDS + $2)) found
    while :; do
        found=$(leaders)
        found=${found//$exclude/}
        read -r -a found <<<"$found"
        if ((${#found[@]} == 1)); then
            echo "${found[0]}"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            if ((${#found[@]} == 0)); then
                fail "no master became leader within $2 s (check: docker-compose logs master-1 master-2 master-3)"
            fi
            fail "masters ${found[*]} all say they lead after $2 s: the three masters are not one Raft group"
        fi
        sleep 0.5
    done
}

# write_and_check NAME WRITER READER: 8 MiB of random data written via client-WRITER, read back
# byte-exact via client-READER; its sha256 is left in WRITTEN_SHA.
write_and_check() {
    local name=$1 writer=$2 reader=$3 src got
    src=$(mktemp)
    head -c $((8 * MiB)) /dev/urandom >"$src"
    WRITTEN_SHA=$(sha256sum <"$src" | cut -d' ' -f1)
    docker exec -i "mooseng-client-$writer" dd of="/mnt/mooseng/$name" bs=1M iflag=fullblock status=none <"$src" ||
        { rm -f "$src"; fail "client-$writer cannot write $name"; }
    rm -f "$src"
    expect_sha "$reader" "$name" "$WRITTEN_SHA"
    echo "    $name: 8 MiB written via client-$writer, read back byte-exact via client-$reader"
}

# expect_sha CLIENT FILE SHA: client-CLIENT reads /mnt/mooseng/FILE with sha256 SHA.
expect_sha() {
    local got
    got=$(docker exec "mooseng-client-$1" sha256sum "/mnt/mooseng/$2" | cut -d' ' -f1) || fail "client-$1 cannot read $2"
    [[ "$got" == "$3" ]] || fail "client-$1 read $2 with sha256 $got, expected $3"
}

check_failover() {
    local old new t0 before
    say "Failover: the leading master is killed, another one must take over"
    old=$(wait_for_leader none 60)
    echo "    leader: master-$old"
    # The demo's test checked bigfile byte-exact on every client.
    BIG_SHA=$(docker exec mooseng-client-1 sha256sum /mnt/mooseng/bigfile | cut -d' ' -f1) || fail "client-1 cannot read bigfile"
    write_and_check before-failover.bin 1 2
    before=$WRITTEN_SHA
    docker kill "mooseng-master-$old" >/dev/null || fail "cannot kill mooseng-master-$old"
    t0=$SECONDS
    new=$(wait_for_leader "$old" "$FAILOVER_TIMEOUT_S")
    [[ "$(container_state "master-$old")" != running* ]] || fail "mooseng-master-$old is running again: the check needs it down"
    echo "    master-$old killed; master-$new leads after $((SECONDS - t0)) s (at most ${FAILOVER_TIMEOUT_S} s allowed)"
    write_and_check after-failover.bin 2 3
    expect_sha 3 before-failover.bin "$before"
    expect_sha 3 bigfile "$BIG_SHA"
    echo "    data written before the failover reads the same"
    say "The killed master rejoins"
    docker start "mooseng-master-$old" >/dev/null || fail "cannot restart mooseng-master-$old"
    wait_healthy "master-$old"
    new=$(wait_for_leader none 60)
    echo "    master-$old is back; master-$new leads, one leader among three"
}

# `stop` must be a clean shutdown (every daemon exits 0 on SIGTERM, clients unmount) and `start`
# must find the data again in the named volumes.
check_stop_start() {
    local service code logs
    say "Clean stop: every daemon exits 0 on SIGTERM"
    MOOSENG_RUNTIME=docker "$DEMO" stop
    for service in "${SERVICES[@]}"; do
        code=$(docker inspect -f '{{.State.ExitCode}}' "mooseng-$service") || fail "mooseng-$service is gone after stop"
        [[ "$code" == 0 ]] || fail "mooseng-$service exited with $code on docker-compose stop (0 expected: see docker-compose logs $service)"
    done
    logs=$(MOOSENG_RUNTIME=docker "$DEMO" logs) || fail "demo logs failed"
    grep -q "client-1 .*unmounting" <<<"$logs" || fail "client-1 did not say it unmounted on stop (demo logs)"
    echo "    ${#SERVICES[@]} services exited 0"
    say "Start again: the data is still there"
    MOOSENG_SKIP_INSTALL=1 MOOSENG_RUNTIME=docker "$DEMO" start >/dev/null
    expect_sha 2 bigfile "$BIG_SHA"
    expect_sha 1 after-failover.bin "$WRITTEN_SHA"
    echo "    bigfile and after-failover.bin read back byte-exact after the restart"
}

check_monitoring() {
    local up
    say "Monitoring: Prometheus scrapes every daemon, the dashboard answers"
    # Prometheus scrapes every 15 s: wait for a full round.
    for _ in $(seq 1 30); do
        up=$(docker exec mooseng-prometheus curl -sf 'http://127.0.0.1:9090/api/v1/query?query=count(up%7Bjob%3D~%22master%7Cchunkserver%7Cclient%22%7D%3D%3D1)' |
            sed -n 's/.*"value":\[[^,]*,"\([0-9]*\)"\].*/\1/p')
        [[ "$up" == 9 ]] && break
        sleep 2
    done
    [[ "$up" == 9 ]] || fail "Prometheus sees ${up:-no} of the 9 MooseNG targets up (check: docker-compose logs prometheus)"
    echo "    Prometheus: 9 of 9 MooseNG targets up"
    docker exec mooseng-dashboard curl -sf http://127.0.0.1:8080/api/status >/dev/null || fail "the dashboard's /api/status does not answer"
    echo "    Dashboard: /api/status answers"
}

# timed WHAT CMD...: run CMD, note how long it took for the summary.
TIMES=()
timed() {
    local what=$1 t0=$SECONDS
    shift
    "$@"
    TIMES+=("$what: $((SECONDS - t0)) s")
}

main() {
    local t0=$SECONDS
    trap teardown EXIT
    use_engine
    dc --profile grafana down -v --remove-orphans >/dev/null 2>&1 || true # leftovers of an aborted run
    timed "start (build + up + healthy)" env MOOSENG_RUNTIME=docker "$DEMO" start
    MOOSENG_RUNTIME=docker "$DEMO" status
    timed "seed tests + byte-exact checks" env MOOSENG_RUNTIME=docker "$DEMO" test
    timed "monitoring checks" check_monitoring
    timed "failover" check_failover
    timed "stop + start" check_stop_start
    say "Everything passed in $((SECONDS - t0)) s"
    printf '    %s\n' "${TIMES[@]}"
}

main "$@"
