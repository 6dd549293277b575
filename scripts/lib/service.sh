# The platform's long-running services (registry, Git server, SonarQube, ...): one home for how they are
# started, waited for, found and stopped. Sourced by their up/down scripts, not executed.
# shellcheck shell=bash
#
#   service_pid PIDFILE PATTERN         print the pid in PIDFILE when that process runs (not a zombie) and
#                                       its command line matches the extended regex PATTERN; else return 1
#   service_start NAME PIDFILE LOG CMD...
#                                       CMD detached in a session of its own (no terminal, stdin closed,
#                                       fd 9 — the callers' lock — not inherited) under scripts/lib/supervise,
#                                       which starts it again when it crashes; appending to LOG (one previous
#                                       log kept once it passes 50 MiB); the supervisor's pid into PIDFILE
#                                       (its command line holds CMD's, so PATTERN finds either)
#   service_wait NAME SECONDS PIDFILE PATTERN LOG CHECK...
#                                       until CHECK succeeds, saying every 10 s that it still waits; fails
#                                       with LOG's last lines when the process ends or SECONDS pass
#   service_stop NAME PIDFILE PATTERN [GRACE]
#                                       TERM to the service, then waits until nothing of its session's process
#                                       group is left (a server's own children too); KILL to the group after
#                                       GRACE seconds (default 15); removes PIDFILE
#
# Messages go to stderr as "NAME: ...", failures as "NAME: error: what happened. what to do" and exit 1.

service_pid() {
  local pidfile=$1 pattern=$2 pid state
  [[ -s $pidfile ]] || return 1
  pid="$(<"$pidfile")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Running, not a zombie waiting for its parent (kill -0 succeeds on those).
  state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [[ -n $state && ${state:0:1} != Z && ${state:0:1} != X ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE -- "$pattern" || return 1
  echo "$pid"
}

service_start() {
  local name=$1 pidfile=$2 logfile=$3
  shift 3
  mkdir -p "$(dirname "$logfile")" "$(dirname "$pidfile")"
  if [[ -f $logfile ]] && (($(stat -c %s "$logfile") > 50 * 1024 * 1024)); then
    mv -f "$logfile" "$logfile.1"
  fi
  printf '=== %s %s starting: %s\n' "$(date -u +%FT%TZ)" "$name" "$*" >>"$logfile"
  setsid nohup bash "$(dirname "${BASH_SOURCE[0]}")/supervise" "$name" "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
  echo "$!" >"$pidfile"
}

service_wait() {
  local name=$1 timeout=$2 pidfile=$3 pattern=$4 logfile=$5
  shift 5
  local started=$SECONDS next=10 launched
  launched="$(<"$pidfile")"
  until "$@" >/dev/null 2>&1; do
    # The process itself, not service_pid: while setsid and nohup exec into the server, its command line
    # can briefly not match the pattern yet.
    if ! kill -0 "$launched" 2>/dev/null || [[ "$(sed 's/.*) //' "/proc/$launched/stat" 2>/dev/null | cut -c1)" == Z ]]; then
      tail -n 25 "$logfile" >&2 || true
      echo "$name: error: it stopped while starting; its log's last lines are above ($logfile). Fix the cause and run make up again." >&2
      exit 1
    fi
    if ((SECONDS - started >= timeout)); then
      tail -n 25 "$logfile" >&2 || true
      echo "$name: error: not ready after ${timeout}s; its log's last lines are above ($logfile). Fix the cause, or run make down && make up." >&2
      exit 1
    fi
    if ((SECONDS - started >= next)); then
      echo "$name: still starting ($((SECONDS - started))s; log: $logfile)" >&2
      next=$((next + 10))
    fi
    sleep 0.2
  done
  service_pid "$pidfile" "$pattern" >/dev/null || {
    echo "$name: error: ready, but pid $launched in $pidfile is not the server (another process answers?). Stop it (ss -ltnp) and run make up again." >&2
    exit 1
  }
}

service_stop() {
  local name=$1 pidfile=$2 pattern=$3 grace=${4:-15} pid
  if ! pid="$(service_pid "$pidfile" "$pattern")"; then
    if [[ -e $pidfile ]]; then echo "$name: not running (stale pid file removed)" >&2; else echo "$name: not running" >&2; fi
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  # service_start made it the leader of a session and process group of its own (setsid): its pid is the
  # group's id. Without that (a server started otherwise), the process alone.
  local group=$pid
  [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]] || group=""
  left() { service_pid "$pidfile" "$pattern" >/dev/null || { [[ -n $group ]] && kill -0 -- "-$group" 2>/dev/null; }; }
  local deadline=$((SECONDS + grace))
  while ((SECONDS < deadline)) && left; do sleep 0.1; done
  if left; then
    echo "$name: did not stop within ${grace}s of SIGTERM; killing ${group:+its process group }$pid" >&2
    kill -KILL -- "${group:+-}$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$pidfile"
  echo "$name: stopped (pid $pid)" >&2
}
