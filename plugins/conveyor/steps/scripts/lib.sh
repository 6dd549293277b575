# Shared helpers of Conveyor's step scripts. Every value from an app spec or a run
# arrives as a positional argument or an environment variable, never pasted into
# this text, so nothing a user writes is ever interpreted by a shell.
set -euo pipefail

say() { printf '[conveyor] %s\n' "$*"; }

# The step's result (JSON, written by `xcom`): a file of this script's, emptied first, so that only what this
# run wrote is handed on.
conveyor_result_file="${TMPDIR:-/tmp}/conveyor-result.json"
rm -f "$conveyor_result_file"

# The step's last words (the step's own container only: the operator gives it a token made for this pod, as
# CONVEYOR_STEP_END in Conveyor's own images, CONVEYOR_STEP_RESULT in one an app spec chose). The token leaves
# the environment at once, so no program this script starts inherits it. Whatever ends the script, the last
# lines it prints are its result, if it wrote one, as "[conveyor] step-result <token> <i>/<n> <base64>" lines,
# then "[conveyor] step-end <token> <exit code>": the operator reads the result from the log (no sidecar, no
# exec) and knows the step is over before the Kubernetes API says so (conveyor.pod_manager.StepEnd, which reads
# these formats). stderr joins stdout first: two pipes reach the log in no fixed order, and the operator stops
# reading at the end line, so an error printed just before it must not arrive after it.
if [[ -n "${CONVEYOR_STEP_END:-}${CONVEYOR_STEP_RESULT:-}" ]]; then
  conveyor_token="${CONVEYOR_STEP_END:-$CONVEYOR_STEP_RESULT}"
  unset CONVEYOR_STEP_END CONVEYOR_STEP_RESULT
  exec 2>&1
  trap 'conveyor_last_words "$?"' EXIT
fi

# conveyor_last_words CODE: the EXIT trap. Pieces of 8000 base64 characters (RESULT_LINE_WIDTH in
# conveyor.pod_manager), far below the 16 KiB at which the container runtime splits a log line. A result that
# cannot be printed fails the step.
conveyor_last_words() {
  local code="$1" encoded pieces=() i
  if [[ -s "$conveyor_result_file" ]]; then
    if encoded="$(base64 -w 8000 "$conveyor_result_file")"; then
      mapfile -t pieces <<<"$encoded"
      for i in "${!pieces[@]}"; do
        printf '[conveyor] step-result %s %d/%d %s\n' "$conveyor_token" "$((i + 1))" "${#pieces[@]}" "${pieces[i]}"
      done
    else
      printf '[conveyor] ERROR: %s\n' "the step's result could not be handed on: this image needs base64 (GNU coreutils)."
      [[ "$code" != 0 ]] || code=1
    fi
  fi
  printf '[conveyor] step-end %s %s\n' "$conveyor_token" "$code"
  exit "$code"
}

fail() { printf '[conveyor] ERROR: %s\n' "$*" >&2; exit 1; }

# git_ URL ARG...: git ARG... with the credentials of the Secret (GIT_USERNAME / GIT_PASSWORD),
# offered to the app's repository URL and nothing else: the credential helper is configured for
# that URL only, path included (credential.<URL>.helper, credential.useHttpPath), so a redirect
# to another host or repository, a submodule or a second remote gets no credential and git
# fails instead of asking. The credentials never appear in a URL, an argument or the log. The
# config goes through GIT_CONFIG_* (not -c), so a URL with '=' in it stays one key.
git_() {
  local url="$1"; shift
  # shellcheck disable=SC2016 # the helper's text is a shell function git runs: that shell expands it
  GIT_TERMINAL_PROMPT=0 GIT_CONFIG_COUNT=3 \
    GIT_CONFIG_KEY_0=credential.helper GIT_CONFIG_VALUE_0='' \
    GIT_CONFIG_KEY_1=credential.useHttpPath GIT_CONFIG_VALUE_1=true \
    GIT_CONFIG_KEY_2="credential.$url.helper" \
    GIT_CONFIG_VALUE_2='!f() { test "$1" = get || exit 0; printf "username=%s\npassword=%s\n" "${GIT_USERNAME:-}" "${GIT_PASSWORD:-}"; }; f' \
    git -c advice.detachedHead=false -c init.defaultBranch=main -c safe.directory='*' "$@"
}

# Write the step's result (JSON, from stdin): the task's XCom. The EXIT trap above hands it on through the log.
xcom() { cat > "$conveyor_result_file"; }

# skopeo / buildah against the registry, with the mounted auth file.
tls_flag() { printf -- '--tls-verify=%s' "${REGISTRY_TLS_VERIFY:-true}"; }

# The build step's own files in the shared workspace: the downloaded base images, the built
# image (an OCI layout) and the digest of an image a rerun reuses.
# shellcheck disable=SC2034 # used by the build's scripts (prepare, build, publish), which follow this text
BUILD_STATE=/workspace/conveyor

# Print the digest of REPOSITORY:TAG ($1, $2) when that image exists and was built from this
# run's commit ($COMMIT_SHA, from its revision label); fail (return 1) otherwise.
built_image_digest() {
  local existing
  existing="$(skopeo inspect "$(tls_flag)" "docker://$1:$2" 2>/dev/null)" || return 1
  [[ "$(jq -r '.Labels["org.opencontainers.image.revision"] // ""' <<<"$existing")" == "${COMMIT_SHA:-none}" ]] || return 1
  jq -r .Digest <<<"$existing"
}

# Fetch exactly one commit into a directory: $1 url, $2 commit, $3 directory.
fetch_commit() {
  local url="$1" commit="$2" dir="$3"
  [[ "$commit" =~ ^[0-9a-f]{40}$ ]] || fail "'$commit' is not a commit SHA; the checkout step hands one on (rerun checkout)."
  git_ "$url" init -q "$dir"
  git_ "$url" -C "$dir" remote add origin "$url"
  if ! git_ "$url" -C "$dir" fetch -q --depth 1 origin "$commit" 2>/dev/null; then
    git_ "$url" -C "$dir" fetch -q origin '+refs/heads/*:refs/remotes/origin/*' '+refs/tags/*:refs/tags/*' \
      || fail "cannot fetch from $url; check the repository URL and the git connection's credentials."
  fi
  git_ "$url" -C "$dir" checkout -q "$commit" \
    || fail "commit $commit is not in $url any more (was the branch force-pushed?); start a new run."
  say "workspace at commit $commit"
}

# Point TAG at an existing DIGEST without rebuilding: $1 repository, $2 digest, $3 tag,
# $4 "keep" to refuse moving a tag that already points elsewhere.
promote() {
  local repository="$1" digest="$2" tag="$3" mode="${4:-move}" current now
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "'$digest' is not an image digest; the build step hands one on (rerun build)."
  current="$(skopeo inspect "$(tls_flag)" --format '{{.Digest}}' "docker://$repository:$tag" 2>/dev/null || true)"
  if [[ "$current" == "$digest" ]]; then
    say "$repository:$tag already points at $digest; nothing to do"
    return 0
  fi
  if [[ -n "$current" && "$mode" == keep ]]; then
    fail "$repository:$tag already exists and points at $current, not at this build's $digest. Release under a new tag."
  fi
  say "promoting $repository@$digest to :$tag"
  skopeo copy --quiet "--src-tls-verify=${REGISTRY_TLS_VERIFY:-true}" "--dest-tls-verify=${REGISTRY_TLS_VERIFY:-true}" \
    "docker://$repository@$digest" "docker://$repository:$tag"
  now="$(skopeo inspect "$(tls_flag)" --format '{{.Digest}}' "docker://$repository:$tag")"
  [[ "$now" == "$digest" ]] || fail "after the copy $repository:$tag points at $now, not $digest; check the registry."
  say "$repository:$tag -> $digest"
}

# remote_ref URL REF: the object REF names in the repository at URL (a tag peeled to its commit), or nothing
# when there is no such ref. Only the exact name counts: `git ls-remote URL refs/heads/main` also lists
# refs that merely end so (x/refs/heads/main), which anyone who may push a branch could plant.
remote_ref() {
  local url="$1" ref="$2" listed
  listed="$(git_ "$url" ls-remote "$url" "$ref" "$ref^{}" 2>/tmp/ls-remote.err)" \
    || fail "cannot reach $url: $(tail -n 3 /tmp/ls-remote.err | tr '\n' ' '). Check the URL, the network and the git connection's credentials."
  printf '%s\n' "$listed" | awk -F '\t' -v ref="$ref" '
    $2 == ref "^{}" { peeled = $1 }
    $2 == ref { plain = $1 }
    END { print (peeled != "" ? peeled : plain) }'
}
