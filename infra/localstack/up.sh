#!/usr/bin/env bash
# Start LocalStack (SQS + CloudWatch Logs + DynamoDB) on 127.0.0.1:4566 and create cloudlog's
# queues and tenant table.
#
# Where a Docker engine answers (`docker info` succeeds) the `localstack` service of the
# repository's docker-compose.yml is started. Otherwise LocalStack's open-source runtime runs on
# the host, from a virtualenv of its own made with Python 3.13 (the runtime needs 3.13), in the
# background; its pid goes to .state/localstack.pid and its output to .state/localstack.log.
# Either way the queue and its dead-letter queue are then created with cloudlog's own
# ensure_queues, and the tenant table (CLOUDLOG_TENANTS_TABLE, default cloudlog-tenants) with
# ensure_tenant_table, from the project's virtualenv. Idempotent: a running LocalStack is reused.
#
# Environment (all optional):
#   LOCALSTACK_MODE      auto (default) | docker | host
#   LOCALSTACK_PORT      gateway port on 127.0.0.1 (default 4566)
#   LOCALSTACK_PYTHON    a Python 3.13 interpreter for the host runtime
#   LOCALSTACK_VENV      the host runtime's virtualenv (default infra/localstack/.venv)
#   LOCALSTACK_STATE_DIR pid file, log and data (default infra/localstack/.state)
#   LOCALSTACK_TIMEOUT   seconds to wait for readiness (default 60)
#   PROJECT_PYTHON       the project's interpreter (default .venv/bin/python)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=infra/localstack/common.sh
source "$HERE/common.sh"

PROJECT_PYTHON=${PROJECT_PYTHON:-$ROOT/.venv/bin/python}
TIMEOUT=${LOCALSTACK_TIMEOUT:-60}
LOCALSTACK_SPEC='localstack-core[runtime]==2026.3.0'
# localstack-core 2026.3.0 does not run with the newest releases of these.
LOCALSTACK_PINS=("cbor2<6" "pyopenssl<25" "cryptography<45" "service-identity")

log() { printf 'localstack-up: %s\n' "$*" >&2; }
die() { printf 'localstack-up: ERROR: %s\n' "$*" >&2; exit 1; }

[[ -x $PROJECT_PYTHON ]] || die "no project interpreter at $PROJECT_PYTHON (run 'make install' first)"

# --- the host runtime -------------------------------------------------------------------------

is_python313() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)' >/dev/null 2>&1
}

find_python313() {
  if [[ -n ${LOCALSTACK_PYTHON:-} ]]; then
    is_python313 "$LOCALSTACK_PYTHON" || die "LOCALSTACK_PYTHON=$LOCALSTACK_PYTHON is not a \
working Python 3.13 interpreter (LocalStack's host runtime needs 3.13)"
    printf '%s\n' "$LOCALSTACK_PYTHON"
    return 0
  fi
  local candidate root
  local -a candidates=(python3.13)
  local pyenv_root=${PYENV_ROOT:-}
  if [[ -z $pyenv_root ]] && command -v pyenv >/dev/null 2>&1; then
    pyenv_root=$(pyenv root 2>/dev/null || true)
  fi
  for root in "$pyenv_root" "$HOME/.pyenv"; do
    [[ -n $root && -d $root/versions ]] || continue
    for candidate in "$root"/versions/3.13*/bin/python3.13; do
      [[ -x $candidate ]] && candidates+=("$candidate")
    done
  done
  candidates+=(/usr/local/bin/python3.13 /usr/bin/python3.13)
  for candidate in "${candidates[@]}"; do
    # A pyenv shim exists even when that version is not selected: ask the interpreter itself.
    if is_python313 "$candidate"; then
      "$candidate" -c 'import sys; print(sys.executable)'
      return 0
    fi
  done
  die "LocalStack's host runtime needs Python 3.13, and none was found (tried python3.13 on \
PATH, pyenv's versions/3.13*, /usr/local/bin and /usr/bin). Install one (e.g. 'pyenv install \
3.13') or set LOCALSTACK_PYTHON=/path/to/python3.13."
}

install_runtime() {
  local stamp=$LS_VENV/.installed-stamp
  local wanted="$LOCALSTACK_SPEC ${LOCALSTACK_PINS[*]}"
  if [[ -x $LS_VENV/bin/python && -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
    return 0
  fi
  local python
  python=$(find_python313)
  log "installing $LOCALSTACK_SPEC into $LS_VENV with $python (takes a minute or two)"
  local started=$SECONDS
  rm -rf "$LS_VENV"
  "$python" -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$LS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "$LOCALSTACK_SPEC" "${LOCALSTACK_PINS[@]}"
  printf '%s' "$wanted" >"$stamp"
  log "installed in $((SECONDS - started)) s"
}

start_host() {
  mkdir -p "$STATE_DIR"
  local pid
  if pid=$(running_pid); then
    log "already running (pid $pid)"
    return 0
  fi
  rm -f "$PID_FILE"
  if port_in_use; then
    die "127.0.0.1:$PORT is already in use by another process; stop it or set LOCALSTACK_PORT"
  fi
  install_runtime
  mkdir -p "$STATE_DIR/data"
  log "starting LocalStack on $ENDPOINT (log: $LOG_FILE)"
  # A background job of a non-interactive shell ignores SIGINT: a Ctrl-C at `make` leaves it be.
  # nohup and env exec, so $! is the Python process itself.
  # GATEWAY_SERVER=hypercorn: LocalStack's default (twisted) server ignores the host part of
  # GATEWAY_LISTEN and binds 0.0.0.0; hypercorn binds 127.0.0.1 as asked.
  # OVERRIDE_IN_DOCKER=0: in a sandbox LocalStack may think it runs in a container and then
  # writes to /var/lib/localstack and /tmp/localstack; on the host it keeps to FILESYSTEM_ROOT.
  nohup env \
    GATEWAY_LISTEN="127.0.0.1:$PORT" \
    GATEWAY_SERVER=hypercorn \
    OVERRIDE_IN_DOCKER=0 \
    LOCALSTACK_HOST="127.0.0.1:$PORT" \
    SERVICES=sqs,logs,dynamodb \
    DNS_ADDRESS=0 \
    EAGER_SERVICE_LOADING=1 \
    SQS_ENDPOINT_STRATEGY=path \
    FILESYSTEM_ROOT="$STATE_DIR/data" \
    LOCALSTACK_TELEMETRY_DISABLED=1 \
    DISABLE_EVENTS=1 \
    "$LS_VENV/bin/python" -m localstack.runtime.main >>"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  log "pid $(cat "$PID_FILE")"
}

# --- docker ---------------------------------------------------------------------------------

start_docker() {
  mkdir -p "$STATE_DIR"
  log "Docker engine answers: docker compose up localstack"
  docker compose -f "$ROOT/docker-compose.yml" up --detach --wait localstack
  echo docker >"$MODE_FILE"
}

# --- readiness and queues -------------------------------------------------------------------

wait_ready() {
  local started=$SECONDS
  "$PROJECT_PYTHON" - "$ENDPOINT" "$TIMEOUT" "${HOST_PID:-}" <<'PY' || return 1
import json, os, sys, time, urllib.request

endpoint, timeout, pid = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + timeout
last = "no answer"
while time.monotonic() < deadline:
    if pid:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            sys.exit(f"LocalStack (pid {pid}) exited while starting")
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=2) as response:
            services = json.load(response).get("services", {})
        last = {name: services.get(name) for name in ("sqs", "logs", "dynamodb")}
        if all(state in ("available", "running") for state in last.values()):
            sys.exit(0)
    except (OSError, ValueError) as exc:
        last = repr(exc)
    time.sleep(0.1)
sys.exit(f"LocalStack not ready after {timeout:.0f} s: {last}")
PY
  log "ready in $((SECONDS - started)) s"
}

create_queues() {
  CLOUDLOG_AWS_ENDPOINT_URL=$ENDPOINT "$PROJECT_PYTHON" -c '
from cloudlog_core.aws import AwsSettings, make_client
from cloudlog_wire.broker import BrokerSettings, ensure_queues

for name, url in ensure_queues(make_client("sqs", AwsSettings()), BrokerSettings()).items():
    print(f"localstack-up: queue {name}: {url}")
'
}

create_tenant_table() {
  CLOUDLOG_AWS_ENDPOINT_URL=$ENDPOINT "$PROJECT_PYTHON" -c '
from cloudlog_ingest.tenant_table import DEFAULT_TENANTS_TABLE, dynamodb_client, ensure_tenant_table
from cloudlog_ingest.tenants import TenantSettings

table = TenantSettings().tenants_table or DEFAULT_TENANTS_TABLE
state = "created" if ensure_tenant_table(dynamodb_client(), table) else "exists"
print(f"localstack-up: tenant table {table}: {state}")
'
}

# --- main -----------------------------------------------------------------------------------

mode=${LOCALSTACK_MODE:-auto}
if [[ $mode == auto ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    mode=docker
  else
    mode=host
  fi
fi

HOST_PID=
case $mode in
  docker) start_docker ;;
  host)
    start_host
    HOST_PID=$(cat "$PID_FILE")
    echo host >"$MODE_FILE"
    ;;
  *) die "LOCALSTACK_MODE must be auto, docker or host, not '$mode'" ;;
esac

if ! wait_ready; then
  if [[ -n $HOST_PID ]]; then
    log "last lines of $LOG_FILE:"
    tail -n 40 "$LOG_FILE" >&2 || true
    "$HERE/down.sh" || true
  fi
  die "LocalStack did not become ready on $ENDPOINT"
fi
create_queues
create_tenant_table
log "LocalStack is up on $ENDPOINT (SQS + CloudWatch Logs + DynamoDB); stop it with 'make localstack-down'"
