# shellcheck shell=bash
# Shared by the MooseNG entrypoints (sourced): render the configuration, wait for dependencies.
# Messages go to stderr, one line each, prefixed with the entrypoint's name, so that
# `docker-compose logs SERVICE` says what is wrong.

ME=$(basename "$0" .sh)
PY=/opt/mooseng/bin/python

say() { printf '%s: %s\n' "$ME" "$*" >&2; }
die() {
    say "$*"
    exit 1
}

# render DAEMON: /usr/local/share/mooseng/DAEMON.toml with the MOOSENG_* variables applied, validated,
# written to /etc/mooseng/DAEMON.toml. A bad variable stops here with exit 2 and the key's name.
render() {
    local out=/etc/mooseng/$1.toml
    "$PY" /usr/local/lib/mooseng/render-config.py "$1" "/usr/local/share/mooseng/$1.toml" "$out" || exit 2
    CONFIG=$out
}

# config_value KEY: a string value of the rendered configuration (first match, quotes removed).
config_value() {
    sed -n "s/^$1 *= *\"\([^\"]*\)\".*/\1/p" "$CONFIG" | head -n1
}

# reachable HOST:PORT: does something accept TCP connections there?
reachable() {
    local host=${1%:*} port=${1##*:}
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

# wait_for_any WHAT TIMEOUT_S ADDR...: wait until one ADDR accepts connections, or die naming them.
wait_for_any() {
    local what=$1 timeout=$2 addr waited=0
    shift 2
    say "waiting for $what ($*)"
    while ((waited < timeout)); do
        for addr in "$@"; do
            if reachable "$addr"; then
                say "$what $addr is up"
                return 0
            fi
        done
        sleep 1
        waited=$((waited + 1))
    done
    die "no $what answered within ${timeout}s at $*: check them with 'docker-compose ps' and 'docker-compose logs'"
}

# list_of KEY: the entries of a TOML list of strings in the rendered configuration, one per line.
list_of() {
    sed -n "s/^$1 *= *\[\(.*\)\].*/\1/p" "$CONFIG" | tr -d '" ' | tr ',' '\n' | sed '/^$/d'
}
