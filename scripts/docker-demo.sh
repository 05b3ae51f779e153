# shellcheck shell=bash disable=SC2154 # MiB, zeros_sha, say, die, fail: from the sourcing script
# Docker mode of demo-unified-cluster.sh: the seed topology in docker-compose.yml. Sourced by
# demo-unified-cluster.sh and test-docker-setup.sh, which define REPO_DIR, say, die and fail.
#
# Every failure a user can meet here (no engine, a port taken, no FUSE device, a service that
# does not come up) ends in one line naming the problem and the seed README's Troubleshooting
# hint for it, never in a stack trace.

MASTER_ENDPOINTS=master-1:9421,master-2:9431,master-3:9441
CHUNKSERVER_PORTS=(9420 9450 9460) # data ports; metrics = data + 5
SERVICES=(master-1 master-2 master-3 chunkserver-1 chunkserver-2 chunkserver-3 client-1 client-2 client-3 prometheus dashboard)
HEALTHY_TIMEOUT_S=${MOOSENG_HEALTHY_TIMEOUT_S:-300}

# The seed's Troubleshooting section, one hint per problem.
hint_engine() {
    cat <<EOF
no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock} (Docker daemon not running):
  On macOS: open -a Docker
  On Linux: sudo systemctl start docker
  Without systemd: export \$(scripts/docker-engine.sh start demo)   (a private engine in its own network namespace)
  Or run the local-process cluster: MOOSENG_RUNTIME=local ./demo-unified-cluster.sh ...
EOF
}

hint_port() {
    local where="lsof -i :$1"
    [[ -n "$(private_engine)" ]] && where="scripts/docker-engine.sh exec $(private_engine) lsof -i :$1   (the engine is private: its ports live in its namespace)"
    cat <<EOF
port $1 is already in use (Port conflicts): check for conflicting processes:
  $where
Stop what holds it, then: ./demo-unified-cluster.sh cleanup && ./demo-unified-cluster.sh start
EOF
}

hint_fuse() {
    cat <<EOF
FUSE mounting issues: $1
  Check client logs:     docker-compose logs client-1
  Verify FUSE device:    docker exec mooseng-client-1 ls -la /dev/fuse
  The host needs /dev/fuse (modprobe fuse); the clients get it with devices: and cap_add: SYS_ADMIN.
EOF
}

hint_service() {
    cat <<EOF
service $1 did not become healthy (Service startup failures): check its logs, then restart it:
  docker-compose logs $1
  docker-compose restart $1
EOF
}

# private_engine: the name of the scripts/docker-engine.sh engine DOCKER_HOST points at, if any.
private_engine() {
    [[ "${DOCKER_HOST:-}" =~ ^unix:///run/mooseng-docker/([^/]+)/docker.sock$ ]] && echo "${BASH_REMATCH[1]}"
    return 0
}

docker_reachable() {
    command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

require_engine() {
    command -v docker >/dev/null 2>&1 || die "the docker client is missing: apt-get install -y --no-install-recommends docker.io (or MOOSENG_RUNTIME=local)"
    docker_reachable || {
        hint_engine >&2
        exit 1
    }
    if command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    elif docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    else
        die "Docker Compose is missing: apt-get install -y docker-compose (or the Compose v2 plugin)"
    fi
}

dc() {
    "${COMPOSE[@]}" --project-directory "$REPO_DIR" -f "$REPO_DIR/docker-compose.yml" "$@"
}

# classify_compose_failure OUTPUT: say what went wrong in a failed compose call, with the hint.
classify_compose_failure() {
    local out=$1 port
    if port=$(grep -oE '(0\.0\.0\.0|\[?::\]?):[0-9]+(: bind: address already in use| failed: port is already allocated)' <<<"$out" | head -n1 | grep -oE ':[0-9]+' | head -n1); then
        hint_port "${port#:}" >&2
    elif grep -qiE 'device.*fuse|fuse.*no such file' <<<"$out"; then
        hint_fuse "the engine cannot give the clients the FUSE device ${MOOSENG_FUSE_DEVICE:-/dev/fuse} ($(grep -oiE 'error gathering device information[^:]*: [a-z ]+' <<<"$out" | head -n1))" >&2
    elif grep -qiE "cannot connect to the docker daemon|is the docker daemon running|couldn't connect to docker daemon" <<<"$out"; then
        hint_engine >&2
    else
        tail -n 20 <<<"$out" >&2
        echo "docker-compose failed (see its output above); logs of every service: docker-compose logs" >&2
    fi
    exit 1
}

# compose_or_explain ARGS...: run a compose command; on failure explain it and exit.
compose_or_explain() {
    local out
    if ! out=$(dc "$@" 2>&1); then
        classify_compose_failure "$out"
    fi
}

# The images' build inputs: wheels (scripts/build-wheels.sh) and the debootstrap bases, unless the
# user picked other bases (MOOSENG_BASE_IMAGE, MOOSENG_PROMETHEUS_BASE_IMAGE).
build_images() {
    local log
    say "Building the wheelhouse (scripts/build-wheels.sh)"
    MOOSENG_PYTHON="$PYTHON" "$REPO_DIR/scripts/build-wheels.sh" || exit 1
    [[ -n "${MOOSENG_BASE_IMAGE:-}" ]] || "$REPO_DIR/docker/build-base.sh" mooseng-base:bookworm
    [[ -n "${MOOSENG_PROMETHEUS_BASE_IMAGE:-}" ]] || "$REPO_DIR/docker/build-base.sh" mooseng-prometheus-base:bookworm prometheus
    say "Building the images (docker-compose build)"
    log=$(mktemp)
    if ! DOCKER_BUILDKIT=0 dc build >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "building the images failed (output above)"
    fi
    rm -f "$log"
}

# container_state SERVICE: "running healthy", "exited -", "missing -", ...
container_state() {
    local state
    if state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}' "mooseng-$1" 2>/dev/null); then
        echo "$state"
    else
        echo "missing -"
    fi
}

# wait_healthy SERVICE...: until every one is healthy; a service that exits or stays unhealthy
# past HEALTHY_TIMEOUT_S fails with its last log lines and the hint for it.
wait_healthy() {
    local deadline=$((SECONDS + HEALTHY_TIMEOUT_S)) service state pending
    while :; do
        pending=()
        for service in "$@"; do
            state=$(container_state "$service")
            case "$state" in
            "running healthy") ;;
            running* | created*) pending+=("$service") ;;
            *) service_failed "$service" "$state" ;;
            esac
        done
        ((${#pending[@]})) || return 0
        ((SECONDS < deadline)) || service_failed "${pending[0]}" "$(container_state "${pending[0]}") after ${HEALTHY_TIMEOUT_S}s"
        sleep 2
    done
}

service_failed() {
    local service=$1 state=$2 logs
    logs=$(docker logs --tail 15 "mooseng-$service" 2>&1) || true
    echo "--- last lines of docker-compose logs $service ($state):" >&2
    # shellcheck disable=SC2001 # indents every line
    sed 's/^/    /' <<<"$logs" >&2
    if [[ "$service" == client-* ]] && grep -qiE 'fuse|SYS_ADMIN|cannot mount' <<<"$logs"; then
        hint_fuse "$service cannot mount its file system" >&2
    else
        hint_service "$service" >&2
    fi
    exit 1
}

# master_metric N NAME: the value of metric NAME on master-N (empty when it does not answer).
master_metric() {
    docker exec "mooseng-master-$1" curl -sf --max-time 3 "http://127.0.0.1:$((9413 + 10 * $1))/metrics" 2>/dev/null |
        awk -v name="$2" '$1 == name { print $2; exit }'
}

# leaders: the numbers of the masters that say they lead, space-separated.
leaders() {
    local i out=()
    for i in 1 2 3; do
        [[ "$(master_metric "$i" mooseng_raft_leader)" == 1* ]] && out+=("$i")
    done
    echo "${out[*]}"
}

docker_start() {
    if [[ "${MOOSENG_SKIP_INSTALL:-0}" != 1 ]]; then
        say "Installing (scripts/install.sh)"
        "$REPO_DIR/scripts/install.sh"
    fi
    build_images
    say "Starting the cluster (docker-compose up -d)"
    compose_or_explain up -d
    say "Waiting until every service is healthy (at most ${HEALTHY_TIMEOUT_S}s)"
    wait_healthy "${SERVICES[@]}"
    echo
    docker_urls
}

# require_cluster: stop with a clear line when the Compose cluster has not been started.
require_cluster() {
    [[ "$(container_state master-1)" != missing* ]] ||
        die "the Docker cluster is not running (no container mooseng-master-1): $0 start"
}

docker_status() {
    local i rc=0 role
    require_cluster
    say "Services (docker-compose ps)"
    dc ps
    echo
    say "Masters (mooseng_raft_leader)"
    for i in 1 2 3; do
        case "$(master_metric "$i" mooseng_raft_leader)" in
        1*) role=leader ;;
        0*) role=follower ;;
        *) role="not answering" rc=1 ;;
        esac
        printf '    master-%d: %s\n' "$i" "$role"
    done
    echo
    say "File system (mooseng status, from client-1)"
    docker exec mooseng-client-1 mooseng --master "$MASTER_ENDPOINTS" status || rc=1
    return "$rc"
}

docker_urls() {
    local i port
    echo "Masters (client API, Raft, metrics):"
    for i in 1 2 3; do
        printf '  master-%d       localhost:%d  localhost:%d  http://localhost:%d/metrics\n' "$i" $((9411 + 10 * i)) $((9412 + 10 * i)) $((9413 + 10 * i))
    done
    echo "Chunkservers (data, metrics):"
    for i in 1 2 3; do
        port=${CHUNKSERVER_PORTS[$((i - 1))]}
        printf '  chunkserver-%d  localhost:%d  http://localhost:%d/metrics\n' "$i" "$port" $((port + 5))
    done
    echo "Clients (metrics; FUSE mount /mnt/mooseng inside the container):"
    for i in 1 2 3; do
        printf '  client-%d       http://localhost:%d/metrics  docker exec mooseng-client-%d ls /mnt/mooseng\n' "$i" $((9417 + 10 * i)) "$i"
    done
    echo "Monitoring:"
    echo "  Prometheus     http://localhost:9090"
    echo "  Dashboard      http://localhost:8080"
    echo "  Grafana        http://localhost:3000 (admin/admin): public image, needs a registry: docker-compose --profile grafana up -d grafana"
    if [[ -n "$(private_engine)" ]]; then
        echo "The engine is private (scripts/docker-engine.sh): its ports are reachable in its namespace only, e.g."
        echo "  scripts/docker-engine.sh exec $(private_engine) curl -s http://localhost:9423/metrics"
    fi
}

docker_logs() {
    case "${1:-}" in
    "") dc logs --tail="$LOG_LINES" ;;
    -f) dc logs --tail="$LOG_LINES" -f ;;
    *) usage ;;
    esac
}

docker_stop() {
    say "Stopping every service (docker-compose stop: clients write their buffers and unmount)"
    compose_or_explain --profile grafana stop
}

docker_cleanup() {
    say "Removing containers, network and volumes (docker-compose down -v); images are kept"
    compose_or_explain --profile grafana down -v --remove-orphans
}

# --- test: the seed's "Testing" section, verbatim, plus byte-exact checks ----------------------

# in_client N CMD...: run CMD in client-N.
in_client() {
    local n=$1
    shift
    docker exec "mooseng-client-$n" "$@"
}

# verify_in_clients FILE SIZE SHA: every client reads /mnt/mooseng/FILE with SIZE bytes, sha256 SHA.
verify_in_clients() {
    local file=$1 size=$2 sha=$3 i got
    for i in 1 2 3; do
        got=$(in_client "$i" stat -c %s "/mnt/mooseng/$file") || fail "client-$i cannot stat $file"
        [[ "$got" == "$size" ]] || fail "client-$i sees $file with $got bytes, expected $size"
        got=$(in_client "$i" sha256sum "/mnt/mooseng/$file" | cut -d' ' -f1) || fail "client-$i cannot read $file"
        [[ "$got" == "$sha" ]] || fail "client-$i read $file with sha256 $got, expected $sha"
    done
    printf '    %s: %d bytes, sha256 %.16s..., identical on 3 clients\n' "$file" "$size" "$sha"
}

# wait_writers NAME...: wait for the background writers (pids in WRITERS) and fail on any error.
wait_writers() {
    local i=0 name
    for name in "$@"; do
        wait "${WRITERS[$i]}" || fail "writer $name failed: $(tail -n1 "$SCRATCH/$name.out")"
        printf '    %s: %s\n' "$name" "$(tail -n1 "$SCRATCH/$name.out")"
        i=$((i + 1))
    done
}

docker_test() {
    local got i
    require_cluster
    wait_healthy client-1 client-2 client-3
    SCRATCH=$(mktemp -d)
    trap 'rm -rf "$SCRATCH"' EXIT

    say "Filesystem operations: create via client-1, read via client-2, list via client-3"
    docker exec mooseng-client-1 sh -c "echo 'Hello MooseNG' > /mnt/mooseng/test.txt" || fail "client-1 cannot write test.txt"
    got=$(docker exec mooseng-client-2 cat /mnt/mooseng/test.txt) || fail "client-2 cannot read test.txt"
    [[ "$got" == "Hello MooseNG" ]] || fail "client-2 read '$got' from test.txt, expected 'Hello MooseNG'"
    echo "    client-2 read: $got"
    docker exec mooseng-client-3 ls -la /mnt/mooseng/ >"$SCRATCH/ls" || fail "client-3 cannot list /mnt/mooseng"
    sed 's/^/    /' "$SCRATCH/ls"
    grep -q ' test.txt$' "$SCRATCH/ls" || fail "client-3 does not list test.txt"

    say "Large file test: dd 100 MiB via client-1"
    docker exec mooseng-client-1 dd if=/dev/zero of=/mnt/mooseng/bigfile bs=1M count=100 2>"$SCRATCH/big.out" ||
        fail "dd via client-1 failed: $(tail -n1 "$SCRATCH/big.out")"
    echo "    $(tail -n1 "$SCRATCH/big.out")"
    verify_in_clients bigfile $((100 * MiB)) "$(zeros_sha $((100 * MiB)))"

    say "Concurrent access test: three clients write 50 MiB each at once"
    WRITERS=()
    docker exec mooseng-client-1 dd if=/dev/zero of=/mnt/mooseng/file1 bs=1M count=50 2>"$SCRATCH/file1.out" &
    WRITERS+=($!)
    docker exec mooseng-client-2 dd if=/dev/zero of=/mnt/mooseng/file2 bs=1M count=50 2>"$SCRATCH/file2.out" &
    WRITERS+=($!)
    docker exec mooseng-client-3 dd if=/dev/zero of=/mnt/mooseng/file3 bs=1M count=50 2>"$SCRATCH/file3.out" &
    WRITERS+=($!)
    wait_writers file1 file2 file3
    for i in 1 2 3; do
        verify_in_clients "file$i" $((50 * MiB)) "$(zeros_sha $((50 * MiB)))"
    done

    # Zeros hide misplaced blocks; random data does not. 70 MiB crosses the 64 MiB chunk boundary.
    say "Byte exactness: three clients write 70 MiB of random data at once, the others read it back"
    WRITERS=()
    for i in 1 2 3; do
        head -c $((70 * MiB)) /dev/urandom >"$SCRATCH/random$i.src"
        docker exec -i "mooseng-client-$i" dd of="/mnt/mooseng/random$i.bin" bs=1M iflag=fullblock \
            <"$SCRATCH/random$i.src" 2>"$SCRATCH/random$i.out" &
        WRITERS+=($!)
    done
    wait_writers random1 random2 random3
    for i in 1 2 3; do
        verify_in_clients "random$i.bin" $((70 * MiB)) "$(sha256sum <"$SCRATCH/random$i.src" | cut -d' ' -f1)"
    done
    in_client 1 rm -f /mnt/mooseng/random1.bin /mnt/mooseng/random2.bin /mnt/mooseng/random3.bin
    say "All filesystem tests passed"
}
