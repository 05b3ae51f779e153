#!/usr/bin/env bash
# MooseNG demo cluster (the seed README's commands): start | status | urls | test | logs [-f] |
# stop | restart | cleanup.
#
# Runtime: with a reachable Docker engine (DOCKER_HOST, or the default socket) or MOOSENG_RUNTIME=docker,
# the seed topology runs in containers from docker-compose.yml (scripts/docker-demo.sh: images
# built offline from a wheelhouse and debootstrap bases, Prometheus, the dashboard).
# MOOSENG_RUNTIME=local, or no reachable engine, runs it as local processes under
# MOOSENG_LOCAL_ROOT (default ./.mooseng) on the seed's ports, bound to 127.0.0.1, with the web
# dashboard (8080) and, if the prometheus binary is installed, Prometheus (9090); Grafana needs Docker.
# Other knobs: MOOSENG_SKIP_INSTALL=1 skips scripts/install.sh on start; MOOSENG_PYTHON picks the
# interpreter (default .venv/bin/python); MOOSENG_LOG_LINES sets how much `logs` shows (default 50).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${MOOSENG_PYTHON:-$REPO_DIR/.venv/bin/python}"
ROOT="${MOOSENG_LOCAL_ROOT:-$REPO_DIR/.mooseng}"
[[ "$ROOT" == /* ]] || ROOT="$PWD/$ROOT"
LOG_LINES="${MOOSENG_LOG_LINES:-50}"
MASTERS=3
CHUNKSERVERS=3
CLIENTS=3
MiB=$((1024 * 1024))
# shellcheck source=scripts/docker-demo.sh
. "$REPO_DIR/scripts/docker-demo.sh"

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'demo-unified-cluster.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat >&2 <<EOF
usage: $0 start|status|urls|test|logs [-f]|stop|restart|cleanup
  start     install (unless MOOSENG_SKIP_INSTALL=1), then start the masters, $CHUNKSERVERS chunkservers, $CLIENTS clients
            and the dashboard and Prometheus (Docker: also builds the images)
  status    processes or containers, mounts and the file system's view (mooseng status)
  urls      metrics URLs, master endpoints, mount points, dashboard and Prometheus
  test      the seed's filesystem and performance tests, with checksums across clients
  logs      last $LOG_LINES lines of every node's log (-f: follow)
  stop      unmount the clients and stop every daemon
  restart   stop, then start (data is kept)
  cleanup   stop, then delete all state ($ROOT; Docker: containers, network, volumes)
Runtime: Docker when an engine is reachable, else local processes; MOOSENG_RUNTIME=local|docker picks one.
EOF
    exit 2
}

# Pick the runtime (RUNTIME=local|docker) and tell the user which one this command acts on.
select_runtime() {
    case "${MOOSENG_RUNTIME:-}" in
    local)
        RUNTIME=local
        say "Runtime: local processes (MOOSENG_RUNTIME=local)."
        ;;
    docker)
        RUNTIME=docker
        require_engine
        say "Runtime: Docker (MOOSENG_RUNTIME=docker, engine ${DOCKER_HOST:-unix:///var/run/docker.sock})."
        ;;
    "")
        if docker_reachable; then
            RUNTIME=docker
            require_engine
            say "Runtime: Docker (engine ${DOCKER_HOST:-unix:///var/run/docker.sock}; MOOSENG_RUNTIME=local for local processes)."
        else
            RUNTIME=local
            say "Runtime: local processes (no Docker engine reachable)."
        fi
        ;;
    *) die "MOOSENG_RUNTIME must be 'local' or 'docker', not '$MOOSENG_RUNTIME'" ;;
    esac
}

require_python() {
    [[ -x "$PYTHON" ]] || die "no Python at $PYTHON: run scripts/install.sh first (or set MOOSENG_PYTHON)"
    "$PYTHON" -c 'import mooseng' 2>/dev/null ||
        die "$PYTHON cannot import mooseng: run scripts/install.sh (start does, unless MOOSENG_SKIP_INSTALL=1)"
}

localcluster() {
    "$PYTHON" -m mooseng.localcluster "$@" --root "$ROOT"
}

mnt() { printf '%s/client-%d/mnt' "$ROOT" "$1"; }

cmd_start() {
    if [[ "${MOOSENG_SKIP_INSTALL:-0}" != 1 ]]; then
        [[ -x "$REPO_DIR/scripts/install.sh" ]] || die "scripts/install.sh is missing (or set MOOSENG_SKIP_INSTALL=1)"
        say "Installing (scripts/install.sh)"
        "$REPO_DIR/scripts/install.sh"
    fi
    require_python
    local monitoring=(--dashboard) what="the dashboard and Prometheus"
    if command -v prometheus >/dev/null; then
        monitoring+=(--prometheus)
    else
        what="the dashboard"
        say "prometheus is not installed (scripts/install.sh installs it): starting without it"
    fi
    say "Starting $MASTERS master(s), $CHUNKSERVERS chunkservers, $CLIENTS clients and $what under $ROOT"
    localcluster start --masters "$MASTERS" --chunkservers "$CHUNKSERVERS" --clients "$CLIENTS" "${monitoring[@]}"
    echo
    cmd_urls
}

cmd_status() {
    require_python
    local endpoints rc=0
    endpoints="$(localcluster endpoints)" || exit 1
    say "Processes"
    localcluster status || rc=1
    echo
    say "File system (mooseng status)"
    "$PYTHON" -m mooseng.cli.main --master "$endpoints" status || rc=1
    return "$rc"
}

cmd_urls() {
    require_python
    localcluster urls
}

cmd_logs() {
    local follow=() log logs=()
    case "${1:-}" in
    "") ;;
    -f) follow=(-F) ;;
    *) usage ;;
    esac
    for log in "$ROOT"/master-*/*.log "$ROOT"/chunkserver-*/*.log "$ROOT"/client-*/*.log \
        "$ROOT"/dashboard/*.log "$ROOT"/prometheus/*.log; do
        [[ -f "$log" ]] && logs+=("$log")
    done
    ((${#logs[@]})) || die "no logs under $ROOT (start the cluster first)"
    # One tail for all logs (no background jobs to clean up); -v makes it name every file.
    tail -v -n "$LOG_LINES" "${follow[@]}" "${logs[@]}" 2>/dev/null | label_lines
}

# Prefix each line of a multi-file tail with its node name, taken from tail's "==> FILE <==" headers.
label_lines() {
    local line node=""
    while IFS= read -r line; do
        if [[ "$line" =~ ^==\>\ (.*)\ \<==$ ]]; then
            node="$(basename "${BASH_REMATCH[1]}" .log)"
        elif [[ -n "$line" ]]; then
            printf '%-14s | %s\n' "$node" "$line"
        fi
    done
}

# --- test ---------------------------------------------------------------------------------------

fail() {
    printf 'TEST FAILED: %s\n' "$*" >&2
    exit 1
}

sha_of() { sha256sum <"$1" | cut -d' ' -f1; }

zeros_sha() { head -c "$1" /dev/zero | sha256sum | cut -d' ' -f1; }

# dd with its summary line shown; a failed dd fails the test with dd's own message.
run_dd() {
    local out
    out="$(dd "$@" 2>&1)" || fail "dd $*: $(tail -n1 <<<"$out")"
    printf '    %s\n' "$(tail -n1 <<<"$out")"
}

# Every client must read FILE with SIZE bytes and sha256 SHA (byte-exact across clients).
verify_everywhere() {
    local file="$1" size="$2" sha="$3" i got_size got_sha
    for ((i = 1; i <= CLIENTS; i++)); do
        got_size="$(stat -c %s "$(mnt "$i")/$file")" || fail "client-$i cannot stat $file"
        [[ "$got_size" == "$size" ]] || fail "client-$i sees $file with $got_size bytes, expected $size"
        got_sha="$(sha_of "$(mnt "$i")/$file")" || fail "client-$i cannot read $file"
        [[ "$got_sha" == "$sha" ]] || fail "client-$i read $file with sha256 $got_sha, expected $sha"
    done
    printf '    %s: %d bytes, sha256 %.16s..., identical on %d clients\n' "$file" "$size" "$sha" "$CLIENTS"
}

# One writer per client, all at once ({i} in SRC and DST is the client number); each must succeed.
parallel_dd() {
    local src_pattern="$1" dst="$2" size_mib="$3" i pids=()
    local scratch="$ROOT/test-scratch"
    for ((i = 1; i <= CLIENTS; i++)); do
        dd if="${src_pattern//\{i\}/$i}" of="$(mnt "$i")/${dst//\{i\}/$i}" bs=1M count="$size_mib" 2>"$scratch/dd$i.out" &
        pids+=($!)
    done
    for ((i = 1; i <= CLIENTS; i++)); do
        if ! wait "${pids[$((i - 1))]}"; then
            fail "writer on client-$i failed: $(tail -n1 "$scratch/dd$i.out")"
        fi
        printf '    client-%d: %s\n' "$i" "$(tail -n1 "$scratch/dd$i.out")"
    done
}

cmd_test() {
    require_python
    localcluster status >/dev/null || die "the cluster is not (fully) running: see '$0 status', or '$0 start'"
    local m1 m2 m3 got i scratch="$ROOT/test-scratch"
    m1="$(mnt 1)" m2="$(mnt 2)" m3="$(mnt 3)"
    rm -rf "$scratch"
    mkdir -p "$scratch"
    trap 'rm -rf "$ROOT/test-scratch"' EXIT

    say "Create a file via client-1, read it via client-2, list via client-3"
    echo 'Hello MooseNG' >"$m1/test.txt" || fail "client-1 cannot write test.txt"
    got="$(cat "$m2/test.txt")" || fail "client-2 cannot read test.txt"
    [[ "$got" == "Hello MooseNG" ]] || fail "client-2 read '$got' from test.txt, expected 'Hello MooseNG'"
    echo "    client-2 read: $got"
    # shellcheck disable=SC2012 # the seed's listing, shown to the user
    ls -la "$m3/" | sed 's/^/    /' || fail "client-3 cannot list its mount"
    [[ -f "$m3/test.txt" ]] || fail "client-3 does not list test.txt"

    say "Large file: dd 100 MiB of zeros via client-1"
    run_dd if=/dev/zero of="$m1/bigfile" bs=1M count=100
    verify_everywhere bigfile $((100 * MiB)) "$(zeros_sha $((100 * MiB)))"

    say "Concurrent access: three clients each write 50 MiB of zeros at once"
    parallel_dd /dev/zero 'file{i}' 50
    for ((i = 1; i <= CLIENTS; i++)); do
        verify_everywhere "file$i" $((50 * MiB)) "$(zeros_sha $((50 * MiB)))"
    done

    # Zeros hide misplaced blocks; random data does not. Sizes cross the 64 MiB chunk boundary.
    say "Random data: three clients each write 70 MiB at once, then a file of 64 MiB + 12345 bytes"
    for ((i = 1; i <= CLIENTS; i++)); do
        head -c $((70 * MiB)) /dev/urandom >"$scratch/random$i.src"
    done
    parallel_dd "$scratch/random{i}.src" 'random{i}.bin' 70
    for ((i = 1; i <= CLIENTS; i++)); do
        verify_everywhere "random$i.bin" $((70 * MiB)) "$(sha_of "$scratch/random$i.src")"
    done
    head -c $((64 * MiB + 12345)) /dev/urandom >"$scratch/odd.src"
    cp "$scratch/odd.src" "$m2/odd-size.bin" || fail "client-2 cannot write odd-size.bin"
    verify_everywhere odd-size.bin $((64 * MiB + 12345)) "$(sha_of "$scratch/odd.src")"

    rm -f "$m1"/random*.bin "$m1/odd-size.bin"
    say "All filesystem tests passed"
}

main() {
    [[ $# -ge 1 ]] || usage
    local command="$1"
    shift
    case "$command" in
    start | status | urls | test | stop | restart | cleanup) [[ $# -eq 0 ]] || usage ;;
    logs) ;;
    *) usage ;;
    esac
    select_runtime
    if [[ "$RUNTIME" == docker ]]; then
        case "$command" in
        start) docker_start ;;
        status) docker_status ;;
        urls) docker_urls ;;
        test) docker_test ;;
        logs) docker_logs "$@" ;;
        stop) docker_stop ;;
        restart)
            docker_stop
            docker_start
            ;;
        cleanup) docker_cleanup ;;
        esac
        return
    fi
    case "$command" in
    start) cmd_start ;;
    status) cmd_status ;;
    urls) cmd_urls ;;
    test) cmd_test ;;
    logs) cmd_logs "$@" ;;
    stop)
        require_python
        localcluster stop
        ;;
    restart)
        require_python
        localcluster stop
        cmd_start
        ;;
    cleanup)
        require_python
        localcluster cleanup
        say "Removed $ROOT"
        ;;
    esac
}

main "$@"
