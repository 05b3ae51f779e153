#!/bin/bash
# healthcheck.sh DAEMON: exit 0 when this container's daemon does its job (Docker HEALTHCHECK).
#   master, chunkserver: its /metrics endpoint answers (the port is read from the rendered config)
#   client: the FUSE file system is mounted and answers a stat
#   dashboard: its JSON API answers
set -u
CONFIG=/etc/mooseng/$1.toml
port_of() { sed -n "s/^$1 *= *\"[^\"]*:\([0-9]*\)\".*/\1/p" "$CONFIG" | head -n1; }
case "$1" in
master | chunkserver) exec curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$(port_of metrics_listen)/metrics" ;;
client)
    mnt=$(sed -n 's/^mount_point *= *"\([^"]*\)".*/\1/p' "$CONFIG")
    grep -q " $mnt fuse" /proc/mounts && exec timeout 2 stat -t "$mnt" >/dev/null
    exit 1
    ;;
dashboard) exec curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$(port_of listen)/api/status" ;;
*) exit 1 ;;
esac
