# Checking that a port is free before a server starts on it. Sourced, not executed.
# shellcheck shell=bash
#
#   port_free PORT WHAT FIX   true when nothing answers on 127.0.0.1:PORT; else says that WHAT cannot
#                             start there, how to see which program holds it, and FIX, and returns 1

port_free() {
  local port=$1 what=$2 fix=$3
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || return 0
  printf "error: port %s is taken by another program, so %s cannot start (\`ss -ltnp 'sport = :%s'\` shows which); %s\n" \
    "$port" "$what" "$port" "$fix" >&2
  return 1
}
