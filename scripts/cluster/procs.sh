# Process bookkeeping for the cluster's daemons: pid files in $RUN, logs in $LOGS.
# shellcheck shell=bash

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

# running PID: the process exists and is not a zombie (PID 1 here may not reap).
running() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

# alive NAME: its pid file names a running process whose command is still NAME's.
alive() {
  local pid exe
  pid=$(pid_of "$1")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  [[ "$(basename "${exe% (deleted)}")" == "$1" ]]
}

all_alive() { local c; for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done; }

# start_daemon NAME CMD...: runs CMD detached (own session), logs to $LOGS/NAME.log.
start_daemon() {
  local name=$1; shift
  log "starting $name"
  # Keep one previous log when it grew past 50 MiB.
  if [[ -f "$LOGS/$name.log" ]] && (( $(stat -c %s "$LOGS/$name.log") > 50 * 1024 * 1024 )); then
    mv -f "$LOGS/$name.log" "$LOGS/$name.log.1"
  fi
  {
    echo "=== $(date -u +%FT%TZ) starting: $*"
  } >> "$LOGS/$name.log"
  setsid nohup "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null 9>&- &
  echo $! > "$RUN/$name.pid"
  sleep 0.5
  alive "$name" || { tail -20 "$LOGS/$name.log" >&2; die "$name exited right after starting (log: $LOGS/$name.log)" "read the log above, fix the cause, then run scripts/cluster/down && make cluster-up"; }
}

# wait_for NAME SECONDS CMD...: until CMD succeeds; fail with the log if NAME dies.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      tail -25 "$LOGS/$name.log" >&2
      die "$name stopped while starting (log: $LOGS/$name.log)" "read the log above, fix the cause, then run scripts/cluster/down && make cluster-up"
    fi
    if (( SECONDS > deadline )); then
      tail -25 "$LOGS/$name.log" >&2
      die "$name did not become healthy within ${timeout}s (log: $LOGS/$name.log)" "read the log above; scripts/cluster/down && make cluster-up retries"
    fi
    sleep 1
  done
}

check_alive() {
  local c
  for c in "$@"; do
    if ! alive "$c"; then
      tail -25 "$LOGS/$c.log" >&2
      die "$c is not running (log: $LOGS/$c.log)" "read the log above, fix the cause, then run scripts/cluster/down && make cluster-up"
    fi
  done
}

# stop NAME: TERM, then KILL after a grace period.
stop() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if [[ -n "$pid" ]] && alive "$name"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do running "$pid" || break; sleep 0.5; done
    if running "$pid"; then
      warn "$name did not stop within 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "$RUN/$name.pid"
}

# lock_cluster: one `up` or `down` at a time (waits up to 10 minutes for the other).
lock_cluster() {
  mkdir -p "$RUN"
  exec 9>"$RUN/cluster.lock"
  if ! flock -w 600 9; then
    die "another scripts/cluster/up or down has been running for 10 minutes" "wait for it or stop it (its pid: fuser $RUN/cluster.lock), then retry"
  fi
}

# our_shim_pids: containerd shims started by *our* containerd (matched by socket path).
our_shim_pids() {
  local d cmd
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null || true)
    if [[ "$cmd" == *containerd-shim* && "$cmd" == *"$CONTAINERD_SOCK"* ]]; then echo "${d#/proc/}"; fi
  done
}
