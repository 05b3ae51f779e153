#!/bin/bash
# Client container: check FUSE, render /etc/mooseng/client.toml, wait until a master accepts
# connections, then become mooseng-mount (exec: on `docker stop` it writes its buffered data and
# unmounts). Runs as root: mounting needs /dev/fuse and CAP_SYS_ADMIN.
set -euo pipefail
# shellcheck source=entrypoint-lib.sh
. /usr/local/lib/mooseng/entrypoint-lib.sh

FUSE_HINT="check: docker-compose logs client-1; docker exec mooseng-client-1 ls -la /dev/fuse"
[ -c /dev/fuse ] ||
    die "/dev/fuse is missing in this container: run it with --device /dev/fuse --cap-add SYS_ADMIN (compose: devices and cap_add); $FUSE_HINT"
cap_eff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)
(((0x$cap_eff >> 21) & 1)) ||
    die "no CAP_SYS_ADMIN: a FUSE mount needs --cap-add SYS_ADMIN (compose: cap_add: [SYS_ADMIN]); $FUSE_HINT"

render client
mount_point=$(config_value mount_point)
mkdir -p "$mount_point"
mapfile -t masters < <(list_of master_endpoints)
wait_for_any master "${MOOSENG_WAIT_S:-180}" "${masters[@]}"
exec mooseng-mount -c "$CONFIG" "$@"
