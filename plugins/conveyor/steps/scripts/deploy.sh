# deploy_<env>: apply the rendered manifests with the environment's own credentials, wait for
# every rollout, and on failure roll back to the previous revision and fail with the cause.
# usage: deploy.sh ENVIRONMENT NAMESPACE TIMEOUT_SECONDS
#   (the approved manifests in $CONVEYOR_MANIFESTS, their SHA-256 in $CONVEYOR_MANIFESTS_SHA256)
environment="$1"; namespace="$2"; timeout="$3"
[[ -n "${CONVEYOR_MANIFESTS:-}" ]] || fail "no approved manifests were handed to this step (the release check hands them on); rerun the deploy task."
# Apply only the approved bytes: the release check handed on their SHA-256 too.
printf '%s' "$CONVEYOR_MANIFESTS" > /tmp/manifests.yaml
actual="$(sha256sum /tmp/manifests.yaml | cut -d' ' -f1)"
[[ "$actual" == "${CONVEYOR_MANIFESTS_SHA256:-}" ]] \
  || fail "the manifests handed to this step (sha256 $actual) are not the approved ones (${CONVEYOR_MANIFESTS_SHA256:-none}); nothing was applied."
say "manifests for $environment (namespace $namespace):"
cat /tmp/manifests.yaml
say "applying"
kubectl apply --namespace "$namespace" -f /tmp/manifests.yaml -o name | tee /tmp/applied
mapfile -t rollouts < <(grep -E '^(deployment|statefulset|daemonset)\.apps/' /tmp/applied || true)
explain() {
  # The cause a person needs: pods that are not ready, their container states and the last events.
  local resource="$1" selector
  kubectl get --namespace "$namespace" "$resource" -o json \
    | jq -r '.spec.selector.matchLabels | to_entries | map("\(.key)=\(.value)") | join(",")' > /tmp/selector || true
  selector="$(cat /tmp/selector)"
  [[ -n "$selector" ]] || return 0
  kubectl get pods --namespace "$namespace" -l "$selector" -o json | jq -r '
    .items[] | . as $pod | (.status.containerStatuses // [])[] | select(.ready | not)
    | "pod \($pod.metadata.name) container \(.name): " +
      ((.state.waiting | select(.) | "\(.reason): \(.message // "")") //
       (.state.terminated | select(.) | "terminated \(.reason) exit \(.exitCode): \(.message // "")") //
       (.lastState.terminated | select(.) | "last exit \(.exitCode) (\(.reason))") // "not ready")' || true
  kubectl get events --namespace "$namespace" --sort-by=.lastTimestamp -o json | jq -r '
    .items[-10:][] | select(.type == "Warning") | "event \(.involvedObject.kind)/\(.involvedObject.name): \(.reason): \(.message)"' || true
}
for resource in "${rollouts[@]}"; do
  say "waiting up to ${timeout}s for $resource"
  if ! kubectl rollout status --namespace "$namespace" "$resource" --timeout="${timeout}s"; then
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
