# tag: push the release tag to git at the run's commit, and tag the same image digest.
# usage: tag.sh URL COMMIT TAG REPOSITORY DIGEST
url="$1"; commit="$2"; tag="$3"; repository="$4"; digest="$5"
[[ -n "$tag" ]] || fail "no release tag for this run; trigger it with the param tag_name (e.g. v1.2.3)."
existing="$(remote_ref "$url" "refs/tags/$tag")"
if [[ -n "$existing" && "$existing" != "$commit" ]]; then
  fail "git tag $tag already exists in $url at commit $existing, not at this run's $commit. Choose a new tag_name."
elif [[ -n "$existing" ]]; then
  say "git tag $tag already points at $commit"
else
  fetch_commit "$url" "$commit" /workspace/src
  git_ "$url" -C /workspace/src -c user.name=Conveyor -c user.email=conveyor@localhost tag -a "$tag" -m "Release $tag" "$commit"
  git_ "$url" -C /workspace/src push -q origin "refs/tags/$tag"
  say "pushed git tag $tag at $commit"
fi
promote "$repository" "$digest" "$tag" keep
