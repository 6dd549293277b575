# build: build the image with buildah, with no credential at all: this container runs the app's
# code (the Dockerfile's RUN lines). The base images from the app's registry were downloaded by
# the prepare container; the image is written as an OCI layout into the workspace, and the main
# container pushes it.
# usage: build.sh STRATEGY CONTEXT DOCKERFILE REPOSITORY TAG
#   STRATEGY dockerfile: build CONTEXT with DOCKERFILE
#   STRATEGY source|binary: write a Dockerfile from $CONVEYOR_BASE_IMAGE, $CONVEYOR_COPY,
#                           $CONVEYOR_PORT and $CONVEYOR_CMD (a JSON array), then build
strategy="$1"; context="$2"; dockerfile="$3"; repository="$4"; tag="$5"
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
if [[ -f "$BUILD_STATE/reuse" ]]; then
  say "this build's image exists already (built from commit $COMMIT_SHA); nothing to build"
  exit 0
fi
n=0
while IFS= read -r image; do
  id="$(buildah pull --quiet "dir:$BUILD_STATE/bases/$n")"
  buildah tag "$id" "$image"
  n=$((n + 1))
done < <(cat "$BUILD_STATE/bases/list" 2>/dev/null || true)
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
say "building $repository:$tag"
# --pull=false: use the downloaded bases; only a base that is missing is pulled (without credentials).
# Not --quiet: the output of the RUN lines belongs in the step's log.
buildah bud --layers=false --pull=false "$(tls_flag)" --build-arg "REGISTRY=${CONVEYOR_REGISTRY}" \
  --label "org.opencontainers.image.revision=${COMMIT_SHA}" --label "org.opencontainers.image.source=$repository" \
  -f "$dockerfile" -t "$repository:$tag" "$context" \
  || fail "the image build failed (its output is above). If a base image could not be pulled from $CONVEYOR_REGISTRY: this container holds no registry credential, so name every base of that registry in a FROM line (ARGs declared before the first FROM are understood); the prepare container's log lists what it downloaded."
rm -rf "$BUILD_STATE/image"
buildah push --quiet "$repository:$tag" "oci:$BUILD_STATE/image:image"
say "built $repository:$tag into the workspace; the main container pushes it"
