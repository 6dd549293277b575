# deploy_<env>: apply the rendered manifests with the environment's own credentials, wait for
# every rollout, and on failure roll back to the previous revision and fail with the cause.
# usage: deploy.sh ENVIRONMENT NAMESPACE TIMEOUT_SECONDS
#   (the approved manifests in $CONVEYOR_MANIFESTS, their SHA-256 in $CONVEYOR_MANIFESTS_SHA256)
environment="$1"; namespace="$2"; timeout="$3"
work="$(mktemp -d)"
[[ -n "${CONVEYOR_MANIFESTS:-}" ]] || fail "no approved manifests were handed to this step (the release check hands them on); rerun the deploy task."
# Apply only the approved bytes: the release check handed on their SHA-256 too.
printf '%s' "$CONVEYOR_MANIFESTS" > "$work/manifests.yaml"
actual="$(sha256sum "$work/manifests.yaml" | cut -d' ' -f1)"
[[ "$actual" == "${CONVEYOR_MANIFESTS_SHA256:-}" ]] \
  || fail "the manifests handed to this step (sha256 $actual) are not the approved ones (${CONVEYOR_MANIFESTS_SHA256:-none}); nothing was applied."

# A Kubernetes API that does not answer for a moment is not a failed apply or rollout: such kubectl
# calls are made again (apply is idempotent) until the step's rollout timeout has passed.
unreachable() { grep -qE 'Unable to connect to the server|connection refused|i/o timeout|TLS handshake timeout|connection reset by peer' "$1"; }
deadline=$(( SECONDS + timeout ))
say "manifests for $environment (namespace $namespace):"
cat "$work/manifests.yaml"
say "applying"
until kubectl apply --namespace "$namespace" -f "$work/manifests.yaml" -o name > "$work/applied" 2> "$work/apply.err"; do
  cat "$work/apply.err" >&2
  # shellcheck disable=SC2015 # fail unless both hold: the API did not answer and there is time left
  unreachable "$work/apply.err" && (( SECONDS < deadline )) \
    || fail "kubectl apply to $environment failed (above); fix the cause and run the deploy again (applying is idempotent)."
  say "the Kubernetes API did not answer; applying again"
  sleep 2
done
cat "$work/applied"
mapfile -t rollouts < <(grep -E '^(deployment|statefulset|daemonset)\.apps/' "$work/applied" || true)

# wait_rollout RESOURCE: kubectl rollout status within the time left, again while the API does not answer.
wait_rollout() {
  local left
  while :; do
    left=$(( deadline - SECONDS ))
    (( left > 0 )) || return 1
    kubectl rollout status --namespace "$namespace" "$1" --timeout="${left}s" 2>&1 | tee "$work/rollout.out" && return 0
    unreachable "$work/rollout.out" || return 1
    say "the Kubernetes API did not answer; waiting for $1 again"
    sleep 2
  done
}
explain() {
  # The cause a person needs: pods that are not ready, their container states and the last events.
  local resource="$1" selector
  kubectl get --namespace "$namespace" "$resource" -o json \
    | jq -r '.spec.selector.matchLabels | to_entries | map("\(.key)=\(.value)") | join(",")' > "$work/selector" || true
  selector="$(cat "$work/selector")"
  [[ -n "$selector" ]] || return 0
  kubectl get pods --namespace "$namespace" -l "$selector" -o json > "$work/pods" || echo '{"items": []}' > "$work/pods"
  jq -r '
    .items[] | . as $pod | (.status.containerStatuses // [])[] | select(.ready | not)
    | "pod \($pod.metadata.name) container \(.name): " +
      ((.state.waiting | select(.) | "\(.reason): \(.message // "")") //
       (.state.terminated | select(.) | "terminated \(.reason) exit \(.exitCode): \(.message // "")") //
       (.lastState.terminated | select(.) | "last exit \(.exitCode) (\(.reason))") // "not ready")' "$work/pods" || true
  # Only this resource's events: its own, its pods' and their ReplicaSets' (other apps share the namespace).
  jq -c --arg name "${resource#*/}" \
    '[$name] + [.items[] | .metadata.name, (.metadata.ownerReferences // [])[].name] | unique' "$work/pods" > "$work/names" \
    || echo '[]' > "$work/names"
  kubectl get events --namespace "$namespace" --sort-by=.lastTimestamp -o json | jq -r --slurpfile names "$work/names" '
    [.items[] | select(.type == "Warning" and (.involvedObject.name as $n | $names[0] | any(.[]; . == $n)))][-10:][]
    | "event \(.involvedObject.kind)/\(.involvedObject.name): \(.reason): \(.message)"' || true
}
for resource in "${rollouts[@]}"; do
  deadline=$(( SECONDS + timeout ))
  say "waiting up to ${timeout}s for $resource"
  if ! wait_rollout "$resource"; then
    say "rollout of $resource did not become ready; the cause:"
    explain "$resource" | sed 's/^/[conveyor]   /'
    if kubectl rollout history --namespace "$namespace" "$resource" 2>/dev/null | grep -qE '^[0-9]+' \
       && [[ "$(kubectl rollout history --namespace "$namespace" "$resource" | grep -cE '^[0-9]+')" -gt 1 ]]; then
      say "rolling $resource back to the previous revision"
      kubectl rollout undo --namespace "$namespace" "$resource"
      kubectl rollout status --namespace "$namespace" "$resource" --timeout="${timeout}s" || true
    else
      say "$resource has no previous revision to roll back to"
    fi
    fail "deploy to $environment failed: $resource did not become ready within ${timeout}s (see the cause above); the previous revision keeps serving."
  fi
done
say "deployed to $environment: ${#rollouts[@]} rollout(s) ready"
