# The Git server's pid, shared by scripts/gitserver/up and down. Sourced, not executed.
# shellcheck shell=bash
#
#   server_pid RUN    print the pid in RUN/gitserver.pid if that process is the server `up`
#                     started there (lighttpd with RUN/lighttpd.conf, or the Python server that
#                     came before it) and still runs; else return 1

server_pid() {
  local run=$1 pid state
  [[ -s $run/gitserver.pid ]] || return 1
  pid="$(<"$run/gitserver.pid")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Running, not a zombie waiting for its parent (kill -0 succeeds on those).
  state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null)" && [[ -n $state && ${state:0:1} != Z ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
    | grep -qE "^lighttpd -D -f $run/lighttpd.conf \$|gitserver/server.py" || return 1
  echo "$pid"
}
