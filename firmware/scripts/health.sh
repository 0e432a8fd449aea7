#!/bin/sh
# Health and metrics of the local edge service over its Unix socket.
#   firmware/scripts/health.sh [/run/edge/edge.sock]
# Waits up to $EDGE_READY_TIMEOUT seconds (default 300) for /health to say 200 (the model loads
# after boot), then prints /health, the edge_* metrics and, under systemd, the unit's status.
set -eu
SOCK=${1:-/run/edge/edge.sock}
TIMEOUT=${EDGE_READY_TIMEOUT:-300}
i=0
until curl --fail --silent --unix-socket "$SOCK" http://localhost/health; do
    i=$((i + 1))
    [ "$i" -lt "$((TIMEOUT * 2))" ] || { echo "edge is not ready after $TIMEOUT s" >&2; exit 1; }
    sleep 0.5
done
echo
curl --fail --silent --unix-socket "$SOCK" http://localhost/metrics | grep '^edge_'
if [ -d /run/systemd/system ]; then
    systemctl status edge.service --no-pager
fi
