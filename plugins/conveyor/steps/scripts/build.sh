# build: build the image without a Docker daemon (buildah) and push the snapshot tags, one digest.
# usage: build.sh STRATEGY CONTEXT DOCKERFILE REPOSITORY TAG [TAG...]
#   STRATEGY dockerfile: build CONTEXT with DOCKERFILE
#   STRATEGY source|binary: write a Dockerfile from $CONVEYOR_BASE_IMAGE, $CONVEYOR_COPY,
#                           $CONVEYOR_PORT and $CONVEYOR_CMD (a JSON array), then build
strategy="$1"; context="$2"; dockerfile="$3"; repository="$4"; shift 4
tags=("$@")
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
# A rerun of this step for the same build reuses the image it pushed: SNAPSHOT-<build number>
# is unique to the build, and the image records the commit it was built from.
last_tag="${tags[${#tags[@]}-1]}"
if existing="$(skopeo inspect "$(tls_flag)" "docker://$repository:$last_tag" 2>/dev/null)" \
   && [[ "$(jq -r '.Labels["org.opencontainers.image.revision"] // ""' <<<"$existing")" == "${COMMIT_SHA:-none}" ]]; then
  digest="$(jq -r .Digest <<<"$existing")"
  say "$repository:$last_tag was already built from commit $COMMIT_SHA; reusing $digest (no rebuild)"
  for tag in "${tags[@]}"; do
    promote "$repository" "$digest" "$tag" move
  done
  jq -n --arg digest "$digest" --arg repository "$repository" --args '{digest: $digest, repository: $repository, tags: $ARGS.positional}' "${tags[@]}" | xcom
  exit 0
fi
cd /workspace/src
if [[ "$strategy" != dockerfile ]]; then
  dockerfile=/workspace/Dockerfile.conveyor
  [[ -n "$(compgen -G "$CONVEYOR_COPY" || true)" ]] || fail "nothing matches '$CONVEYOR_COPY' in the repository; check 'image.artifact' / the package command."
  {
    printf 'FROM %s\n' "$CONVEYOR_BASE_IMAGE"
    printf 'WORKDIR /app\n'
    if [[ "$strategy" == binary ]]; then
      printf 'COPY %s /app/\n' "$CONVEYOR_COPY"
    else
      printf 'COPY . /app/\n'
      printf 'RUN if [ -f requirements.txt ]; then pip3 install --no-cache-dir --break-system-packages -r requirements.txt; fi\n'
    fi
    printf 'EXPOSE %s\n' "$CONVEYOR_PORT"
    printf 'CMD %s\n' "$CONVEYOR_CMD"
  } > "$dockerfile"
  say "generated Dockerfile ($strategy-to-image):"
  cat "$dockerfile"
fi
[[ -f "$dockerfile" ]] || fail "no Dockerfile at '$dockerfile' in the repository; add one or choose image.strategy source/binary."
say "building $repository:${tags[0]}"
buildah bud --quiet --layers=false "$(tls_flag)" --build-arg "REGISTRY=${CONVEYOR_REGISTRY}" \
  --label "org.opencontainers.image.revision=${COMMIT_SHA}" --label "org.opencontainers.image.source=$repository" \
  -f "$dockerfile" -t "$repository:${tags[0]}" "$context"
say "pushing $repository:${tags[0]}"
buildah push --quiet "$(tls_flag)" --digestfile /tmp/digest "$repository:${tags[0]}" "docker://$repository:${tags[0]}"
digest="$(cat /tmp/digest)"
for tag in "${tags[@]:1}"; do
  promote "$repository" "$digest" "$tag" move
done
say "built $repository@$digest"
jq -n --arg digest "$digest" --arg repository "$repository" --args '{digest: $digest, repository: $repository, tags: $ARGS.positional}' "${tags[@]}" | xcom
