# The platform's long-running services (registry, Git server, SonarQube, Keycloak): one home for how they are
# started, waited for, found and stopped. Sourced by their up/down scripts, not executed.
# shellcheck shell=bash
#
#   service_pid PIDFILE PATTERN         print the pid in PIDFILE when that process runs (not a zombie), its
#                                       command line matches the extended regex PATTERN, it started when the
#                                       process service_start made did (PIDFILE.start) and belongs to the pid
#                                       file's owner; else return 1 (a pid reused by another process, even
#                                       one whose command line looks alike, is never taken for the service)
#   service_start NAME PIDFILE LOG CMD...
#                                       CMD detached in a session of its own (no terminal, stdin closed,
#                                       fd 9 — the callers' lock — not inherited) under scripts/lib/supervise,
#                                       which starts it again when it crashes after it was ready; appending
#                                       to LOG (one previous log kept once it passes 50 MiB); the
#                                       supervisor's pid into PIDFILE (its command line holds CMD's, so
#                                       PATTERN finds either)
#   service_wait NAME SECONDS PIDFILE PATTERN LOG CHECK...
#                                       until CHECK succeeds, saying every 10 s that it still waits; then the
#                                       service counts as ready (PIDFILE.ready: from now on a crash is
#                                       restarted). Fails with LOG's last lines when it ends first, and stops
#                                       it when SECONDS pass
#   service_stop NAME PIDFILE PATTERN [GRACE]
#                                       TERM to the service, then waits until nothing of its session is left
#                                       (a server's own children too); KILL to the session after GRACE
#                                       seconds (default 15); removes PIDFILE. A server whose supervisor
#                                       was killed is found (and stopped) as a member of that session.
#
# Messages go to stderr as "NAME: ...", failures as "NAME: error: what happened. what to do" and exit 1.

# The folder of this file, resolved once as it is loaded: the supervisor root starts is this one, never one
# found relative to a working directory someone else may own.
_service_lib="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"

# _stat PID: the fields of /proc/PID/stat after the command's name (which may hold spaces): state, parent,
# process group, session, ...; nothing (and status 1) when there is no such process.
_stat() { local line; { line="$(<"/proc/$1/stat")"; } 2>/dev/null || return 1; echo "${line##*) }"; }

# _live PID: the process runs, not a zombie waiting for its parent (kill -0 succeeds on those).
_live() { local state; state="$(_stat "$1")" && [[ -n $state && ${state:0:1} != Z && ${state:0:1} != X ]]; }

# _started PID: when the process started (clock ticks since boot; field 22 of /proc/PID/stat): with the pid,
# it names one process for as long as the machine runs.
_started() { local fields; read -r -a fields <<<"$(_stat "$1")" && [[ -n ${fields[19]:-} ]] && echo "${fields[19]}"; }

# _matches PID PATTERN: its command line matches the extended regex PATTERN.
_matches() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qE -- "$2"; }

service_pid() {
  local pidfile=$1 pattern=$2 pid
  [[ -s $pidfile ]] || return 1
  pid="$(<"$pidfile")"
  [[ $pid =~ ^[0-9]+$ ]] && _live "$pid" && _matches "$pid" "$pattern" || return 1
  [[ "$(stat -c %u "/proc/$pid" 2>/dev/null)" == "$(stat -c %u "$pidfile")" ]] || return 1
  # (a pid file written before start times were kept has none: the checks above are all it gets)
  [[ ! -e $pidfile.start || "$(_started "$pid")" == "$(<"$pidfile.start")" ]] || return 1
  echo "$pid"
}

# _session_members SID [PATTERN]: the live processes (not zombies) of session SID, those whose command line
# matches PATTERN when given.
_session_members() {
  local sid=$1 pattern=${2:-} dir pid fields
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    read -r -a fields <<<"$(_stat "$pid")" || continue
    [[ ${fields[3]:-} == "$sid" ]] || continue
    _live "$pid" || continue
    [[ -z $pattern ]] || _matches "$pid" "$pattern" || continue
    echo "$pid"
  done
}

service_start() {
  local name=$1 pidfile=$2 logfile=$3
  shift 3
  mkdir -p "$(dirname "$logfile")" "$(dirname "$pidfile")"
  if [[ -f $logfile ]] && (($(stat -c %s "$logfile") > 50 * 1024 * 1024)); then
    mv -f "$logfile" "$logfile.1"
  fi
  rm -f "$pidfile.ready"
  printf '=== %s %s starting: %s\n' "$(date -u +%FT%TZ)" "$name" "$*" >>"$logfile"
  SUPERVISE_READY_FILE="$pidfile.ready" setsid nohup bash "$_service_lib/supervise" "$name" "$@" \
    >>"$logfile" 2>&1 </dev/null 9>&- &
  local pid=$!
  _started "$pid" >"$pidfile.start" || rm -f "$pidfile.start"  # (gone already: service_wait says why)
  echo "$pid" >"$pidfile"
}

service_wait() {
  local name=$1 timeout=$2 pidfile=$3 pattern=$4 logfile=$5
  shift 5
  local started=$SECONDS next=10 launched
  launched="$(<"$pidfile")"
  until "$@" >/dev/null 2>&1; do
    # The process itself, not service_pid: while setsid and nohup exec into the supervisor, its command line
    # can briefly not match the pattern yet.
    if ! _live "$launched"; then
      tail -n 25 "$logfile" >&2 || true
      echo "$name: error: it stopped while starting; its log's last lines are above ($logfile). Fix the cause and run make up again." >&2
      exit 1
    fi
    if ((SECONDS - started >= timeout)); then
      tail -n 25 "$logfile" >&2 || true
      service_stop "$name" "$pidfile" "$pattern" 30 || true
      echo "$name: error: not ready after ${timeout}s, so it was stopped; its log's last lines are above ($logfile). Fix the cause, then run make up again." >&2
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
  : >"$pidfile.ready"
}

service_stop() {
  local name=$1 pidfile=$2 pattern=$3 grace=${4:-15} pid="" sid="" members pattern_only=""
  [[ -s $pidfile ]] && pid="$(<"$pidfile")"
  [[ $pid =~ ^[0-9]+$ ]] || pid=""
  if [[ -n $pid ]] && service_pid "$pidfile" "$pattern" >/dev/null; then
    # The supervisor leads the session service_start made: every process of the service is in it.
    sid=$pid
    [[ "$(_stat "$pid" | cut -d' ' -f4)" == "$pid" ]] || sid=""
    kill -TERM "$pid" 2>/dev/null || true
  elif [[ -n $pid ]] && ! _live "$pid" && members="$(_session_members "$pid" "$pattern")" && [[ -n $members ]]; then
    # Its supervisor is gone (killed), the server is not: only what matches the service's pattern is stopped.
    # (While a process with that pid lives, the session is that process's: not the service's.)
    echo "$name: its supervisor (pid $pid) is gone; stopping what is left of it: $(tr '\n' ' ' <<<"$members")" >&2
    # shellcheck disable=SC2086 # one pid a word
    kill -TERM $members 2>/dev/null || true
    sid=$pid
    pattern_only=$pattern
  else
    if [[ -e $pidfile ]]; then echo "$name: not running (stale pid file removed)" >&2; else echo "$name: not running" >&2; fi
    rm -f "$pidfile" "$pidfile.ready" "$pidfile.start"
    return 0
  fi
  left() {
    if [[ -n $sid ]]; then
      [[ -n "$(_session_members "$sid" "${pattern_only:-}")" ]]
    else
      service_pid "$pidfile" "$pattern" >/dev/null
    fi
  }
  local deadline=$((SECONDS + grace))
  while ((SECONDS < deadline)) && left; do sleep 0.1; done
  if left; then
    echo "$name: did not stop within ${grace}s of SIGTERM; killing ${sid:+what is left of its session }${sid:-$pid}" >&2
    if [[ -n $sid ]]; then
      # shellcheck disable=SC2046 # one pid a word
      kill -KILL $(_session_members "$sid" "${pattern_only:-}") 2>/dev/null || true
    else
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.2
  fi
  rm -f "$pidfile" "$pidfile.ready" "$pidfile.start"
  echo "$name: stopped (pid $pid)" >&2
}
