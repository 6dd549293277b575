# cache clear: empty every cache of one app (steps/caches.py). Its folder is renamed away at once, so the
# next run starts afresh while runs still using the old one finish on it; it is deleted when no image build
# holds its layer storage any more (waiting up to 15 min), and left-overs older than a day go too.
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
find /cache/trash -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
