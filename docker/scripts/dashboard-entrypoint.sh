#!/bin/bash
# Dashboard container: render /etc/mooseng/dashboard.toml, then become mooseng-dashboard. It needs
# no master to start: it shows a master it cannot reach as unavailable, and why.
set -euo pipefail
# shellcheck source=entrypoint-lib.sh
. /usr/local/lib/mooseng/entrypoint-lib.sh

render dashboard
exec mooseng-dashboard -c "$CONFIG" "$@"
