#!/bin/bash
# Master container: render /etc/mooseng/master.toml from the MOOSENG_* variables, then become
# mooseng-master (exec: `docker stop` sends SIGTERM to it, and it shuts down cleanly).
# No dependency to wait for: the other masters of the Raft group may start in any order.
set -euo pipefail
# shellcheck source=entrypoint-lib.sh
. /usr/local/lib/mooseng/entrypoint-lib.sh

render master
data_dir=$(config_value data_dir)
[ -w "$data_dir" ] || die "data dir $data_dir is not writable by uid $(id -u): give the volume to uid 10001 (chown -R 10001:10001)"
exec mooseng-master -c "$CONFIG" "$@"
