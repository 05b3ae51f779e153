#!/bin/bash
# Chunkserver container: render /etc/mooseng/chunkserver.toml, wait until a master accepts
# connections, then become mooseng-chunkserver (exec: `docker stop` is a clean shutdown).
set -euo pipefail
# shellcheck source=entrypoint-lib.sh
. /usr/local/lib/mooseng/entrypoint-lib.sh

render chunkserver
while read -r dir; do
    [ -w "$dir" ] || die "data dir $dir is not writable by uid $(id -u): give the volume to uid 10001 (chown -R 10001:10001)"
done < <(list_of data_dirs)
mapfile -t masters < <(list_of master_addrs)
wait_for_any master "${MOOSENG_WAIT_S:-180}" "${masters[@]}"
exec mooseng-chunkserver -c "$CONFIG" "$@"
