# Debian packages the platform and the tests need, installed on first use. Sourced, not executed.
# shellcheck shell=bash
#
#   need_package PACKAGE WHY [COMMAND]   queue PACKAGE unless it is installed (or COMMAND is on PATH)
#   install_needed_packages             install the queued ones: one line each saying what and why
#
# Every script that needs a system package goes through here, so `make up` and `make test`
# set up a fresh Debian 12 machine by themselves and say so, and no script dies with
# "X is not installed" when it could install X.

_needed_packages=()
_needed_reasons=()

need_package() {
  local package=$1 why=$2 command=${3:-}
  if [[ -n $command ]]; then
    command -v "$command" >/dev/null 2>&1 && return 0
  elif dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    return 0
  fi
  local queued
  for queued in "${_needed_packages[@]}"; do [[ $queued == "$package" ]] && return 0; done
  _needed_packages+=("$package")
  _needed_reasons+=("$why")
}

install_needed_packages() {
  ((${#_needed_packages[@]})) || return 0
  local i log cache="${CONVEYOR_CACHE:-/var/cache/conveyor}"
  for i in "${!_needed_packages[@]}"; do
    printf '>> installing %s (Debian package): %s\n' "${_needed_packages[$i]}" "${_needed_reasons[$i]}" >&2
  done
  if [[ $EUID -ne 0 ]]; then
    printf 'error: installing %s needs root\n  what to do: rerun as root (sudo make ...), or run: sudo apt-get install -y %s\n' \
      "${_needed_packages[*]}" "${_needed_packages[*]}" >&2
    exit 1
  fi
  mkdir -p "$cache/logs"
  log="$cache/logs/apt.log"
  # Packages such as docker-registry or containerd ship init scripts that would start a
  # second copy of the service with Debian's config: keep them from starting at install.
  local added_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
  fi
  local status=0
  {
    # A missing or stale package index is the usual cause of a failed install: refresh once and retry.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${_needed_packages[@]}" \
      || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${_needed_packages[@]}"; }
  } >"$log" 2>&1 || status=$?
  [[ -n $added_policy ]] && rm -f /usr/sbin/policy-rc.d
  if ((status)); then
    tail -n 15 "$log" >&2
    printf 'error: apt-get install %s failed (full log: %s)\n  what to do: check the Debian mirror in /etc/apt/sources.list (apt-get update must work), then rerun\n' \
      "${_needed_packages[*]}" "$log" >&2
    exit 1
  fi
  _needed_packages=()
  _needed_reasons=()
}
