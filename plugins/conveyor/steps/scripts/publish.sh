# build, after the image is built: push it with the registry credentials under every snapshot
# tag (one digest) and hand the digest on. Runs no code of the app: what the build container
# left is read as data (an OCI layout of plain files), nothing in it is run or followed.
# usage: publish.sh REPOSITORY TAG [TAG...]
repository="$1"; shift
tags=("$@")
last_tag="${tags[${#tags[@]}-1]}"
layout="$BUILD_STATE/image"
# A rerun of this step for the same build reuses the image it pushed: SNAPSHOT-<build number>
# is unique to the build, and the image records the commit it was built from.
if digest="$(built_image_digest "$repository" "$last_tag")"; then
  say "$repository:$last_tag was already built from commit $COMMIT_SHA; reusing $digest (no rebuild)"
  for tag in "${tags[@]}"; do
    promote "$repository" "$digest" "$tag" move
  done
else
  if [[ -f "$BUILD_STATE/reuse" ]]; then
    fail "the image this build pushed before ($repository:$last_tag) is gone, or no longer built from commit $COMMIT_SHA; rerun the build step."
  fi
  [[ "$(realpath -m "$layout")" == "$layout" && -f "$layout/index.json" ]] \
    || fail "the build left no image at $layout; see the log of the build container."
  odd="$(find "$layout" ! -type f ! -type d -print -quit)"
  [[ -z "$odd" ]] || fail "the built image at $layout holds something that is not a plain file or folder (${odd#"$layout"/}); refusing to push it."
  say "pushing $repository:${tags[0]}"
  skopeo copy --quiet "--dest-tls-verify=${REGISTRY_TLS_VERIFY:-true}" --digestfile /tmp/digest \
    "oci:$layout:image" "docker://$repository:${tags[0]}"
  digest="$(cat /tmp/digest)"
  for tag in "${tags[@]:1}"; do
    promote "$repository" "$digest" "$tag" move
  done
  say "built $repository@$digest"
fi
jq -n --arg digest "$digest" --arg repository "$repository" --args '{digest: $digest, repository: $repository, tags: $ARGS.positional}' "${tags[@]}" | xcom
