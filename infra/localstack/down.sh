#!/usr/bin/env bash
# Stop the LocalStack that up.sh started: by the pid in the pid file (SIGTERM, a grace period,
# then SIGKILL), or `docker compose rm --stop` when it ran under Docker. Idempotent.
#
# Environment (all optional): LOCALSTACK_PORT, LOCALSTACK_STATE_DIR as for up.sh;
#   LOCALSTACK_STOP_GRACE  seconds between SIGTERM and SIGKILL (default 5)
#
# A clean stop takes about 2 s. With the hypercorn gateway (see up.sh) LocalStack 2026.3.0 now
# and then stops its services but leaves its event loop blocked (it stops the loop from another
# thread without waking it), so the process does not exit: SIGKILL after the grace period ends
# it. Nothing is lost by that: this LocalStack keeps its state in memory only.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=infra/localstack/common.sh
source "$HERE/common.sh"

GRACE=${LOCALSTACK_STOP_GRACE:-5}

log() { printf 'localstack-down: %s\n' "$*" >&2; }

if [[ -f $MODE_FILE && $(cat "$MODE_FILE") == docker ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    docker compose -f "$ROOT/docker-compose.yml" rm --stop --force localstack
  else
    log "it ran under Docker, but no Docker engine answers now: nothing to stop"
  fi
  rm -f "$MODE_FILE"
  exit 0
fi

if ! pid=$(running_pid); then
  if [[ -f $PID_FILE ]]; then
    log "stale pid file (no LocalStack runtime has that pid): removed"
  else
    log "not running"
  fi
  rm -f "$PID_FILE" "$MODE_FILE"
  exit 0
fi

log "stopping pid $pid (SIGTERM, up to $GRACE s)"
kill -TERM "$pid" 2>/dev/null || true
deadline=$((SECONDS + GRACE))
while alive "$pid" && ((SECONDS < deadline)); do
  sleep 0.2
done
if alive "$pid"; then
  log "still running after $GRACE s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    alive "$pid" || break
    sleep 0.1
  done
fi
rm -f "$PID_FILE" "$MODE_FILE"
log "stopped"
