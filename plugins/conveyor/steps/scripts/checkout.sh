# checkout: resolve the branch to one commit SHA and check the repo has what the spec needs.
# usage: checkout.sh URL BRANCH [REQUIRED_PATH...]
url="$1"; branch="$2"; shift 2
say "resolving branch '$branch' of $url"
set +e
heads="$(git_ ls-remote --heads --exit-code "$url" "refs/heads/$branch" 2>/tmp/ls-remote.err)"
rc=$?
set -e
if [[ $rc -eq 2 ]]; then
  fail "branch '$branch' does not exist in $url. Push it, or run with an existing branch (param 'branch')."
elif [[ $rc -ne 0 ]]; then
  fail "cannot reach $url: $(tail -n 3 /tmp/ls-remote.err | tr '\n' ' '). Check the URL, the network and the git connection's credentials."
fi
commit="$(printf '%s\n' "$heads" | head -n 1 | cut -f1)"
say "branch '$branch' is at commit $commit"
fetch_commit "$url" "$commit" /workspace/src
missing=()
for path in "$@"; do
  [[ -e "/workspace/src/$path" ]] || missing+=("$path")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  fail "commit $commit of $url lacks what the app spec needs: ${missing[*]}. Add it to the repository or fix the spec."
fi
subject="$(git -C /workspace/src log -1 --format=%s)"
author="$(git -C /workspace/src log -1 --format='%an <%ae>')"
say "commit: $subject ($author)"
jq -n --arg commit "$commit" --arg branch "$branch" --arg message "$subject" --arg author "$author" \
  '{commit: $commit, branch: $branch, message: $message, author: $author}' | xcom
