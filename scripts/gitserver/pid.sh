# The Git server's pid, shared by scripts/gitserver/up and down. Sourced, not executed.
# shellcheck shell=bash
#
#   server_pattern RUN  the command line of the server `up` starts there (lighttpd with RUN/lighttpd.conf,
#                       or the Python server that came before it)
#   server_pid RUN      print the pid in RUN/gitserver.pid if that process is that server and still runs;
#                       else return 1

# shellcheck source=../lib/service.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/service.sh"

server_pattern() { echo "lighttpd -D -f $1/lighttpd.conf \$|gitserver/server.py"; }
server_pid() { service_pid "$1/gitserver.pid" "$(server_pattern "$1")"; }
