# checkout: resolve the branch to one commit SHA and check the repo has what the spec needs.
# usage: checkout.sh URL BRANCH [REQUIRED_PATH...]
# env: CONVEYOR_REQUESTED_COMMIT  build exactly this commit (it must be on BRANCH; when the run's
#                                 CONVEYOR_REQUESTED_TAG exists, it must point at it); empty: BRANCH's newest
url="$1"; branch="$2"; shift 2
wanted="${CONVEYOR_REQUESTED_COMMIT:-}"
wanted_tag="${CONVEYOR_REQUESTED_TAG:-}"
[[ -z "$wanted" || "$wanted" =~ ^[0-9a-f]{40}$ ]] \
  || fail "the param commit '$wanted' is not a commit SHA (40 lowercase hex digits); leave it empty to build the branch's newest commit."
say "resolving branch '$branch' of $url"
commit="$(remote_ref "$url" "refs/heads/$branch")"
[[ -n "$commit" ]] || fail "branch '$branch' does not exist in $url. Push it, or run with an existing branch (param 'branch')."
say "branch '$branch' is at commit $commit"
if [[ -n "$wanted" ]]; then
  tip="$commit"
  commit="$wanted"
  if [[ -n "$wanted_tag" ]]; then
    tagged="$(remote_ref "$url" "refs/tags/$wanted_tag")"
    if [[ -n "$tagged" && "$tagged" != "$commit" ]]; then
      fail "the run asks for commit $commit, but tag $wanted_tag of $url points at $tagged. Start the run from the tag's commit, or release under a new tag_name."
    fi
  fi
  fetch_commit "$url" "$commit" /workspace/src
  # The branch's history down to the asked commit (the workspace holds that commit already, so the fetch
  # stops there when it is on the branch). A tag's commit too must be on the branch: a release is of
  # reviewed code, not of whatever someone tagged.
  git_ "$url" -C /workspace/src fetch -q origin "+refs/heads/$branch:refs/remotes/origin/$branch" 2>/tmp/branch.err \
    || fail "cannot fetch branch '$branch' of $url: $(tail -n 3 /tmp/branch.err | tr '\n' ' '). Check the Git server, then rerun checkout."
  git -C /workspace/src merge-base --is-ancestor "$commit" "refs/remotes/origin/$branch" \
    || fail "commit $commit is not on branch '$branch' of $url (the branch is at $tip; was the commit force-pushed away, or tagged elsewhere?). Build a commit of the branch, or run without the param commit to build its newest."
  if [[ "$tip" == "$commit" ]]; then
    say "building commit $commit, the branch's newest, as the run asks"
  else
    say "building commit $commit as the run asks; branch '$branch' has moved on to $tip since"
  fi
else
  fetch_commit "$url" "$commit" /workspace/src
fi
missing=()
for path in "$@"; do
  [[ -e "/workspace/src/$path" ]] || missing+=("$path")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  fail "commit $commit of $url lacks what the app spec needs: ${missing[*]}. Add it to the repository or fix the spec."
fi
subject="$(git -C /workspace/src log -1 --format=%s)"
author="$(git -C /workspace/src log -1 --format='%an <%ae>')"
author_email="$(git -C /workspace/src log -1 --format=%ae)"
committer_email="$(git -C /workspace/src log -1 --format=%ce)"
say "commit: $subject ($author)"

# Who brought the change: the commits this run releases that no earlier deployment of the app
# already carried (from $CONVEYOR_BASE_COMMITS, the commits Conveyor deployed before; without
# any, the newest commit alone), each with its author and committer e-mails and the user who
# pushed it. Conveyor's Git server notes the authenticated pusher of every commit under a ref
# only the server writes (clients are refused): unlike author and committer, not free text.
notes_ref=refs/notes/conveyor-pushed-by
max_commits=1000
bases=()
for base in ${CONVEYOR_BASE_COMMITS:-}; do
  [[ "$base" =~ ^[0-9a-f]{40}$ ]] || fail "'$base' in CONVEYOR_BASE_COMMITS is not a commit SHA; rerun checkout."
  bases+=("$base")
done
change=("$commit")
truncated=false
if ((${#bases[@]})); then
  git_ "$url" -C /workspace/src fetch -q --unshallow origin 2>/tmp/history.err \
    || git_ "$url" -C /workspace/src fetch -q origin '+refs/heads/*:refs/remotes/origin/*' 2>>/tmp/history.err \
    || fail "cannot fetch the history of $url: $(tail -n 3 /tmp/history.err | tr '\n' ' '). Rerun checkout."
  nots=()
  for base in "${bases[@]}"; do
    if git -C /workspace/src cat-file -e "$base^{commit}" 2>/dev/null; then nots+=("^$base"); fi
  done
  mapfile -t change < <(git -C /workspace/src rev-list --max-count=$((max_commits + 1)) "$commit" "${nots[@]}")
  if ((${#change[@]} > max_commits)); then
    truncated=true
    change=("${change[@]:0:max_commits}")
  fi
  ((${#change[@]})) || change=("$commit")
  say "this release brings ${#change[@]} commit(s) not deployed before$([[ $truncated == true ]] && echo " (the newest $max_commits checked)")"
fi
# (an address longer than 254 characters is no address: left out, so that at most 1,000 commits' worth of
# addresses, the subject and the author stay far below the largest result a step may hand on, 1 MiB)
mapfile -t emails < <(git -C /workspace/src log --no-walk=unsorted --format='%ae%n%ce' "${change[@]}" | awk 'length($0) <= 254' | sort -u)

pusher=""
pushers=()
set +e
notes_tip="$(git_ "$url" ls-remote "$url" "$notes_ref" 2>/tmp/notes.err)"
rc=$?
set -e
[[ $rc -eq 0 ]] || fail "cannot list $notes_ref of $url: $(tail -n 3 /tmp/notes.err | tr '\n' ' '). Check the Git server, then rerun checkout."
if [[ -z "$notes_tip" ]]; then
  say "$url keeps no record of who pushed (no $notes_ref): pusher is empty"
else
  git_ "$url" -C /workspace/src fetch -q --depth 1 origin "+$notes_ref:$notes_ref" 2>/tmp/notes.err \
    || fail "cannot fetch $notes_ref from $url: $(tail -n 3 /tmp/notes.err | tr '\n' ' '). Check the Git server, then rerun checkout."
  for one in "${change[@]}"; do
    record="$(git -C /workspace/src notes --ref="$notes_ref" show "$one" 2>/dev/null || true)"
    who=""
    while IFS= read -r line; do
      if [[ "$line" == "Pushed-by: "* ]]; then who="${line#Pushed-by: }"; break; fi
    done <<<"$record"
    if [[ -n "$who" && ! "$who" =~ ^[a-z][a-z0-9._-]{0,63}$ ]]; then
      say "ignoring the pusher record of $one: it is not a Git server user name"
      who=""
    fi
    [[ "$one" == "$commit" ]] && pusher="$who"
    [[ -n "$who" ]] && pushers+=("$who")
  done
  if [[ -z "$pusher" ]]; then
    say "no pusher recorded for $commit (pushed before $url kept the record)"
  else
    say "pushed by $pusher (recorded by the Git server)"
  fi
fi
jq -n --arg commit "$commit" --arg branch "$branch" --arg message "$subject" --arg author "$author" \
  --arg author_email "$author_email" --arg committer_email "$committer_email" --arg pusher "$pusher" \
  --argjson change_commits "${#change[@]}" --argjson change_truncated "$truncated" \
  --args '{commit: $commit, branch: $branch, message: $message[:1000], author: $author[:600],
    author_email: $author_email[:254], committer_email: $committer_email[:254], pusher: $pusher,
    change_commits: $change_commits, change_truncated: $change_truncated,
    change_emails: ($ARGS.positional | map(select(startswith("email:"))) | map(ltrimstr("email:"))),
    change_pushers: ($ARGS.positional | map(select(startswith("pusher:"))) | map(ltrimstr("pusher:")) | unique)}' \
  "${emails[@]/#/email:}" "${pushers[@]/#/pusher:}" | xcom
