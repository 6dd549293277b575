# cache clear: empty every cache of one app (steps/caches.py). Its folder is renamed away at once, so the
# next run starts afresh while runs still using the old one finish on it; it is deleted when no image build
# holds its layer storage any more (waiting up to 15 min). The caches of any app of the claim that no run
# used for 14 days (an app that was renamed or deleted) and left-overs older than a day go too.
# usage: cache_clear.sh APPS/APP   (relative to the claim, mounted at /cache)
folder="/cache/$1"; app="${1##*/}"
mkdir -p /cache/trash
if [[ -d "$folder" ]]; then
  trash="$(mktemp -d "/cache/trash/$app-XXXXXXXX")"
  mv -T "$folder" "$trash"
  say "the caches of $app are cleared; its next build starts them again"
  if [[ ! -f "$trash/layers/.lock" ]] || flock -x -w 900 "$trash/layers/.lock" true; then
    rm -rf "$trash" 2>/dev/null || true
  else
    say "an image build still uses the old layer cache; it is deleted a day from now"
  fi
else
  say "$app has no caches here"
fi
for other in /cache/apps/*/; do
  other="${other%/}"
  [[ -d "$other" && -z "$(find "$other" -maxdepth 2 -name .used -mtime -14 -print -quit)" ]] || continue
  [[ -z "$(find "$other" -maxdepth 0 -mtime -14 -print)" ]] || continue  # a folder made lately, not yet used
  if [[ ! -f "$other/layers/.lock" ]] || flock -x -n "$other/layers/.lock" true; then
    gone="$(mktemp -d "/cache/trash/${other##*/}-XXXXXXXX")"
    # shellcheck disable=SC2015 # a failed move or removal alike is left to a later run: || true is for both
    mv -T "$other" "$gone" && rm -rf "$gone" 2>/dev/null || true
    say "the caches of ${other##*/} were not used for 14 days: deleted"
  fi
done
find /cache/trash -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
