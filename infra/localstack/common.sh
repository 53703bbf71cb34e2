# Shared by up.sh and down.sh: where LocalStack's state lives. Sourced, not run.
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
PORT=${LOCALSTACK_PORT:-4566}
ENDPOINT="http://127.0.0.1:$PORT"
LS_VENV=${LOCALSTACK_VENV:-$HERE/.venv}
STATE_DIR=${LOCALSTACK_STATE_DIR:-$HERE/.state}
PID_FILE=$STATE_DIR/localstack.pid
MODE_FILE=$STATE_DIR/mode
LOG_FILE=$STATE_DIR/localstack.log

# Whether process $1 exists and has not exited (an exited child not yet reaped is a zombie).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  if [[ -r /proc/$1/stat ]]; then
    local stat
    stat=$(<"/proc/$1/stat") || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]] || return 1
  fi
}

# The pid in the pid file, if that process is alive and is a LocalStack runtime.
running_pid() {
  local pid
  [[ -f $PID_FILE ]] || return 1
  pid=$(tr -dc '0-9' <"$PID_FILE")
  [[ -n $pid ]] || return 1
  alive "$pid" || return 1
  # Guard against a recycled pid: the process must be LocalStack's runtime.
  if [[ -r /proc/$pid/cmdline ]] \
    && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'localstack\.runtime\.main'; then
    return 1
  fi
  printf '%s\n' "$pid"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}
