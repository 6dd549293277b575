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
# The app's layer cache (steps/caches.py), when the pod mounts it: buildah's storage kept between runs,
# so the bases are there and every Dockerfile step whose inputs did not change is taken from the cache
# (--layers), and the OCI layouts of recent images by image id, so an unchanged image is not written
# out again (and the registry already has its layers). Builds of the app share it (containers/storage locks itself), holding .lock shared; only
# pruning takes it alone. On that volume buildah's user namespace can mount overlayfs (the container's
# own root cannot be an overlay's upper layer, hence vfs without it), so a layer is a diff, not a copy
# of the whole image. Without the mount the build starts from nothing, as before.
layers=/var/cache/conveyor/layers
storage=()
cached=false
if [[ -d "$layers" ]]; then
  exec 9>>"$layers/.lock"
  flock -s 9
  touch "$layers/.used"  # unused for 14 days, the app's caches may go (cache_clear.sh)
  export STORAGE_DRIVER=overlay
  storage=(--root "$layers/storage-$STORAGE_DRIVER" --storage-driver "$STORAGE_DRIVER")
  cached=true
fi
b() { buildah "${storage[@]}" "$@"; }
# Source-to-Image builds install requirements.txt with the app's pip cache (steps/caches.py) mounted.
pip_cache=/var/cache/conveyor/deps/pip
pip_in_build=/var/cache/conveyor-pip
volumes=()
if [[ "$strategy" == source && -d "${pip_cache%/pip}" ]]; then
  mkdir -p "$pip_cache"
  volumes=(--volume "$pip_cache:$pip_in_build")
else
  pip_cache=""
fi

# prune_layer_cache DIR BUDGET_KIB: when no other build of the app is running, drop the working
# containers of builds that were killed and all but the 3 newest layouts, and empty the storage when the
# cache holds more than its budget (the next build starts it again).
prune_layer_cache() {
  local dir="$1" budget="$2" used
  if ! flock -x -n 9; then
    say "other builds use the layer cache now; pruning is left to a later build"
    return 0
  fi
  b rm --all >/dev/null 2>&1 || true
  find "$dir/layouts" -mindepth 1 -maxdepth 1 -name '.tmp-*' -exec rm -rf {} + 2>/dev/null || true
  # shellcheck disable=SC2012 # the names are image ids (hex digits); ls -t sorts them newest first
  ls -1t "$dir/layouts" | tail -n +4 | while IFS= read -r old; do rm -rf "${dir:?}/layouts/$old"; done
  # (a few folders of the images only their owner may read are not counted; this root has no DAC_OVERRIDE)
  used="$({ du -sk "$dir" 2>/dev/null || true; } | cut -f1)"
  if (( used > budget )); then
    say "the layer cache holds ${used} KiB, over its budget of ${budget} KiB: emptied (the next build starts it again)"
    b rmi --all --force >/dev/null 2>&1 || say "could not remove every image from the layer cache (buildah rmi --all)"
    rm -rf "${dir:?}/layouts"
    find "$dir/mounts" -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null || true
  else
    say "the layer cache holds ${used} KiB of its ${budget} KiB"
  fi
  flock -s 9
}
n=0
while IFS= read -r image; do
  id="$(b pull --quiet "dir:$BUILD_STATE/bases/$n")"
  b tag "$id" "$image"
  n=$((n + 1))
done < <(cat "$BUILD_STATE/bases/list" 2>/dev/null || true)
cd /workspace/src || exit
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
      if [[ -n "$pip_cache" ]]; then
        printf 'RUN if [ -f requirements.txt ]; then pip3 install --cache-dir %s --break-system-packages -r requirements.txt; fi\n' "$pip_in_build"
      else
        printf 'RUN if [ -f requirements.txt ]; then pip3 install --no-cache-dir --break-system-packages -r requirements.txt; fi\n'
      fi
    fi
    printf 'EXPOSE %s\n' "$CONVEYOR_PORT"
    printf 'CMD %s\n' "$CONVEYOR_CMD"
  } > "$dockerfile"
  say "generated Dockerfile ($strategy-to-image):"
  cat "$dockerfile"
fi
[[ -f "$dockerfile" ]] || fail "no Dockerfile at '$dockerfile' in the repository; add one or choose image.strategy source/binary."
if $cached; then say "building $repository:$tag with the app's layer cache"; else say "building $repository:$tag"; fi
# --pull=false: use the downloaded bases; only a base that is missing is pulled (without credentials).
# Not --quiet: the output of the RUN lines belongs in the step's log ("Using cache" marks a step taken
# from the layer cache).
b bud "--layers=$cached" --pull=false "$(tls_flag)" --build-arg "REGISTRY=${CONVEYOR_REGISTRY}" "${volumes[@]}" \
  --label "org.opencontainers.image.revision=${COMMIT_SHA}" --label "org.opencontainers.image.source=$repository" \
  -f "$dockerfile" -t "$repository:$tag" "$context" \
  || fail "the image build failed (its output is above). If a base image could not be pulled from $CONVEYOR_REGISTRY: this container holds no registry credential, so name every base of that registry in a FROM line (ARGs declared before the first FROM are understood); the prepare container's log lists what it downloaded."
rm -rf "$BUILD_STATE/image"
if ! $cached; then
  b push --quiet "$repository:$tag" "oci:$BUILD_STATE/image:image"
  say "built $repository:$tag into the workspace; the main container pushes it"
  exit 0
fi
image_id="$(b inspect --type image --format '{{.FromImageID}}' "$repository:$tag")"
image_id="${image_id#sha256:}"
[[ "$image_id" =~ ^[0-9a-f]{64}$ ]] || fail "buildah gave '$image_id' as the image id of $repository:$tag; expected 64 hex digits."
layouts="$layers/layouts"
mkdir -p "$layouts"
if [[ -f "$layouts/$image_id/index.json" ]]; then
  say "image $image_id was built before: its layout in the cache is used (nothing new to write)"
else
  tmp="$(mktemp -d "$layouts/.tmp-XXXXXXXX")"
  b push --quiet "$repository:$tag" "oci:$tmp:image"
  # Complete layouts only, under their image id; when another build was quicker, its equal layout stays.
  mv -T "$tmp" "$layouts/$image_id" 2>/dev/null || rm -rf "$tmp"
fi
touch "$layouts/$image_id"
cp -a "$layouts/$image_id" "$BUILD_STATE/image"
say "built $repository:$tag (image $image_id) into the workspace; the main container pushes it"
prune_layer_cache "$layers" "${CONVEYOR_LAYERS_BUDGET_KIB:-4194304}"
