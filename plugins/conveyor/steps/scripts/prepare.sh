# build, before any code of the app runs: with the registry credentials (and no other), find an
# image this build already pushed (a rerun reuses it), or else download the base images the
# Dockerfile builds FROM on the app's registry into the workspace, so that the image build,
# which runs the Dockerfile's RUN lines, needs no credential. Nothing of the app is run here:
# the Dockerfile is read as text ($dockerfile_bases_py).
# usage: prepare.sh STRATEGY DOCKERFILE REPOSITORY LAST_TAG
#   (CONVEYOR_REGISTRY: the app's registry; CONVEYOR_BASE_IMAGE: the base of a source/binary build)
strategy="$1"; dockerfile="$2"; repository="$3"; last_tag="$4"
mkdir -p "$BUILD_STATE/bases"
if digest="$(built_image_digest "$repository" "$last_tag")"; then
  say "$repository:$last_tag was already built from commit $COMMIT_SHA ($digest); the build is skipped"
  printf '%s\n' "$digest" > "$BUILD_STATE/reuse"
  exit 0
fi
if [[ "$strategy" == dockerfile ]]; then
  # shellcheck disable=SC2154 # dockerfile_bases_py is set before this script's text (common.py SCRIPT_HELPERS)
  python3 -c "$dockerfile_bases_py" /workspace/src "$dockerfile" "$CONVEYOR_REGISTRY" "REGISTRY=$CONVEYOR_REGISTRY" \
    > "$BUILD_STATE/bases/list"
elif [[ "${CONVEYOR_BASE_IMAGE%%/*}" == "$CONVEYOR_REGISTRY" ]]; then
  printf '%s\n' "$CONVEYOR_BASE_IMAGE" > "$BUILD_STATE/bases/list"
else
  : > "$BUILD_STATE/bases/list"
fi
n=0
while IFS= read -r image; do
  say "downloading the base image $image"
  skopeo copy --quiet "--src-tls-verify=${REGISTRY_TLS_VERIFY:-true}" "docker://$image" "dir:$BUILD_STATE/bases/$n" \
    || fail "cannot download the base image $image from $CONVEYOR_REGISTRY; check that it exists and that the registry connection may pull it."
  n=$((n + 1))
done < "$BUILD_STATE/bases/list"
say "$n base image(s) from $CONVEYOR_REGISTRY ready for the build; any other base is pulled by the build without credentials"
