# shellcheck shell=bash
# Shared helpers for scripts/{kafka,ferretdb,redis,servers}.sh.
# Sourced, never executed. Callers set `set -euo pipefail` themselves.
#
# Layout (other scripts and the tests rely on it):
#   $REPO/.run/logs/<name>.log    server output (previous run kept as .log.prev)
#   $REPO/.run/pids/<name>.pid    pid of the server process itself (not a wrapper)
#   $REPO/.run/data/<name>/       server data, wiped on every fresh start
#   $REPO/.run/conf/<name>/       generated config files
#   $DPS_CACHE                    downloads/builds reused across runs, never required
# DPS_RUN_DIR may move .run elsewhere (e.g. an isolated trial run); the tests
# and other scripts assume the default.

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPTS_DIR/.." && pwd)"
RUN_DIR="${DPS_RUN_DIR:-$REPO/.run}"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"
DATA_DIR="$RUN_DIR/data"
CONF_DIR="$RUN_DIR/conf"

DPS_CACHE="${DPS_CACHE:-$HOME/.cache/dps}"
export DPS_CACHE

# Everything listens on loopback only; ports are deliberately non-default so a
# system-wide Redis/MongoDB/Kafka on the same machine cannot clash with ours.
DPS_HOST=127.0.0.1
DPS_KAFKA_PORT="${DPS_KAFKA_PORT:-39092}"
DPS_KAFKA_CONTROLLER_PORT="${DPS_KAFKA_CONTROLLER_PORT:-39093}"
DPS_MONGO_PORT="${DPS_MONGO_PORT:-37017}"
DPS_REDIS_PORT="${DPS_REDIS_PORT:-36379}"

# ---------------------------------------------------------------- logging

# Messages go to stderr so that `servers.sh env` keeps a clean stdout.
log() { printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "${LOG_NAME:-dps}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ensure_dirs() {
  mkdir -p "$LOG_DIR" "$PID_DIR" "$DATA_DIR" "$CONF_DIR" "$RUN_DIR/locks" "$DPS_CACHE"
}

# lock_server NAME: hold an exclusive lock on NAME until this script exits.
# Several people (and test fixtures) share one work tree and its .run: two
# concurrent `start`s would otherwise both wipe the data dir and launch a
# server. The second one now waits, then finds the server running.
# fd 200 is closed again in start_bg so the server does not inherit the lock.
lock_server() {
  ensure_dirs
  exec 200>"$RUN_DIR/locks/$1.lock"
  flock -w "${DPS_LOCK_TIMEOUT:-900}" 200 || die "timed out waiting for $RUN_DIR/locks/$1.lock"
}

log_file() { printf '%s/%s.log' "$LOG_DIR" "$1"; }
pid_file() { printf '%s/%s.pid' "$PID_DIR" "$1"; }
data_dir() { printf '%s/%s' "$DATA_DIR" "$1"; }
conf_dir() { printf '%s/%s' "$CONF_DIR" "$1"; }

# Show the end of a server log, for failures.
show_log_tail() {
  local f
  f="$(log_file "$1")"
  if [[ -f "$f" ]]; then
    log "last lines of $f:"
    tail -n "${2:-40}" "$f" >&2 || true
  fi
}

# ---------------------------------------------------------------- packages

# apt_install PKG...: Debian packages, as root (or via sudo). servers.sh runs
# the per-server scripts in parallel, so apt runs are serialized with flock
# (dpkg would otherwise fail on its lock). apt-get update runs once per call.
apt_install() {
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root or sudo to apt-get install $*"
    sudo=(sudo)
  fi
  mkdir -p "$RUN_DIR"
  mkdir -p "$LOG_DIR"
  local apt_log="$LOG_DIR/apt.log"
  if ! (
    flock -w 900 9 || exit 1
    log "apt-get update && apt-get install $* (output: $apt_log)"
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@"
  ) 9>"$RUN_DIR/apt.lock" 200>&- >>"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    die "apt-get install $* failed"
  fi
}

# need_cmd CMD [DEBIAN_PACKAGE]: make sure CMD exists, installing the package if given.
need_cmd() {
  local cmd="$1" pkg="${2:-}"
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [[ -n "$pkg" ]] || die "'$cmd' not found on PATH"
  apt_install "$pkg"
  command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' still missing after installing $pkg"
}

# ---------------------------------------------------------------- ports

# port_open PORT [HOST]: true if something accepts TCP connections there.
# Uses bash's /dev/tcp so no netcat is needed; timeout guards a filtered port.
port_open() {
  local port="$1" host="${2:-$DPS_HOST}"
  timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# ---------------------------------------------------------------- pids

# read_pid NAME: print the recorded pid (empty if none/garbage).
read_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 0
  pid="$(tr -dc '0-9' <"$f")"
  printf '%s' "$pid"
}

# pid_matches PID PATTERN: the pid is alive AND its command line contains
# PATTERN. The pattern check protects against a stale pid file whose number
# the kernel has since handed to an unrelated process.
pid_matches() {
  local pid="$1" pattern="$2"
  [[ -n "$pid" ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 0 # no procfs: trust kill -0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# server_pid NAME PATTERN: print the recorded pid if it is our live server.
server_pid() {
  local pid
  pid="$(read_pid "$1")"
  if pid_matches "$pid" "$2"; then printf '%s' "$pid"; fi
}

# start_bg NAME CMD...: run CMD detached (own session, so a Ctrl-C or a job
# kill aimed at the caller does not take the server down), stdout+stderr
# appended to the server log, and record the server's own pid. The inner
# bash writes $$ and then execs CMD, so the pid file holds the server pid
# whether or not setsid had to fork.
start_bg() {
  local name="$1"
  shift
  local pf lf i
  pf="$(pid_file "$name")"
  lf="$(log_file "$name")"
  rm -f "$pf"
  # Keep the previous run's log for post-mortems, start a fresh one.
  [[ -f "$lf" ]] && mv -f "$lf" "$lf.prev"
  printf '=== %s start %s: %s\n' "$name" "$(date '+%F %T')" "$*" >"$lf"
  # shellcheck disable=SC2016 # $$ and $@ are for the inner bash
  setsid bash -c 'echo $$ >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' "$pf" "$@" \
    >>"$lf" 2>&1 </dev/null 200>&- &
  for ((i = 0; i < 100; i++)); do
    [[ -s "$pf" ]] && return 0
    sleep 0.05
  done
  die "$name: pid file $pf did not appear"
}

# wait_until NAME PATTERN TIMEOUT_S CHECK_CMD...: poll CHECK_CMD until it
# succeeds; fail early if the server process died meanwhile.
wait_until() {
  local name="$1" pattern="$2" timeout_s="$3"
  shift 3
  local deadline=$((SECONDS + timeout_s)) pid
  pid="$(read_pid "$name")"
  while ((SECONDS < deadline)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! pid_matches "$pid" "$pattern"; then
      log "$name exited during startup"
      show_log_tail "$name"
      return 1
    fi
    sleep 0.5
  done
  log "$name not ready after ${timeout_s}s"
  show_log_tail "$name"
  return 1
}

# wait_for_port NAME PATTERN PORT TIMEOUT_S
wait_for_port() { wait_until "$1" "$2" "$4" port_open "$3"; }

# stop_server NAME PATTERN [GRACE_S]: TERM the recorded pid, wait, then KILL.
# Only ever touches the recorded pid, and only if it still is our server.
stop_server() {
  local name="$1" pattern="$2" grace="${3:-15}"
  local pid pf i
  pf="$(pid_file "$name")"
  pid="$(read_pid "$name")"
  if ! pid_matches "$pid" "$pattern"; then
    [[ -f "$pf" ]] && log "$name not running (removing stale pid file)"
    rm -f "$pf"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not exit after ${grace}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$pf"
  log "$name stopped"
}

# fresh_data_dir NAME: wipe and recreate .run/data/NAME. Only called when the
# server is not running, so tests always start from an empty state.
fresh_data_dir() {
  local d
  d="$(data_dir "$1")"
  rm -rf "$d"
  mkdir -p "$d"
}

# status_line NAME PATTERN PORT: one human line, exit 0 only if up.
status_line() {
  local name="$1" pattern="$2" port="$3" pid
  pid="$(server_pid "$name" "$pattern")"
  if [[ -n "$pid" ]] && port_open "$port"; then
    echo "$name: running (pid $pid, $DPS_HOST:$port)"
    return 0
  elif [[ -n "$pid" ]]; then
    echo "$name: process alive (pid $pid) but $DPS_HOST:$port not answering"
    return 1
  fi
  echo "$name: stopped"
  return 1
}

# generic_start NAME PATTERN PORT READY_FN: shared start logic.
#  - already running and ready  -> nothing to do
#  - alive but not ready        -> maybe still starting: wait, else restart
#  - port taken by a stranger   -> refuse (we would never become ready)
#  - otherwise wipe data, call ${NAME}_launch, wait with READY_FN
# READY_FN is a function that polls readiness (returns 0 when ready).
generic_start() {
  local name="$1" pattern="$2" port="$3" ready_fn="$4" launch_fn="$5"
  local pid
  ensure_dirs
  pid="$(server_pid "$name" "$pattern")"
  if [[ -n "$pid" ]]; then
    if port_open "$port"; then
      log "$name already running (pid $pid)"
      return 0
    fi
    log "$name process $pid alive but not answering yet; waiting"
    if "$ready_fn"; then return 0; fi
    stop_server "$name" "$pattern"
  fi
  rm -f "$(pid_file "$name")"
  if port_open "$port"; then
    die "$name: $DPS_HOST:$port is already in use by a process we did not start"
  fi
  fresh_data_dir "$name"
  local t0=$SECONDS
  "$launch_fn"
  if ! "$ready_fn"; then
    stop_server "$name" "$pattern" 5
    die "$name failed to start (log: $(log_file "$name"))"
  fi
  log "$name ready on $DPS_HOST:$port (pid $(read_pid "$name"), $((SECONDS - t0))s)"
}
