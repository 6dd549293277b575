# The app's dependency caches around its own command ("$@": the test or package command), in its
# builder image: POSIX sh, which every builder image has (this file does not get lib.sh).
# pip: PIP_CACHE_DIR is the app's shared cache (pip writes it safely while other runs read or write it).
# Maven: 3.8 does not lock its local repository, so this run works on a copy (-Dmaven.repo.local) and
# puts back only what it added or changed, each file under a temporary name renamed into place.
# A cache over its budget (CONVEYOR_CACHE_BUDGETS: "pip=KiB maven=KiB") is moved aside, so runs that
# still use it are not disturbed, and deleted a day later.
deps=/var/cache/conveyor/deps
repo=/workspace/conveyor/maven-repository
say() { printf '[conveyor] %s\n' "$*"; }
export PIP_CACHE_DIR="$deps/pip"
export MAVEN_OPTS="${MAVEN_OPTS:+$MAVEN_OPTS }-Dmaven.repo.local=$repo"
mkdir -p "$deps/pip" "$deps/maven" "$repo" /workspace/conveyor
touch "$deps/.used"
stamp=/workspace/conveyor/deps-cache.stamp
# Names of this run's temporary files in the shared caches: the pod's name (its host name) and this
# process, as runs in other pods may have the same process id.
me="$(cat /proc/sys/kernel/hostname 2>/dev/null || echo run)-$$"
cp -R -p "$deps/maven/." "$repo/" 2>/dev/null || true
: > "$stamp"
say "the app's dependency caches: pip in $PIP_CACHE_DIR, a copy of its Maven repository in $repo"
"$@"
status=$?
saved=0
dir=
# save_maven LIST ONLY_NEW: put the files of LIST (paths in $repo) into the cache; with ONLY_NEW, those it lacks
save_maven() {
  while IFS= read -r f; do
    f="${f#./}"
    target="$deps/maven/$f"
    [ "$2" = yes ] && [ -e "$target" ] && continue
    case "$f" in */*) d="${f%/*}" ;; *) d=. ;; esac
    [ "$d" = "$dir" ] || { mkdir -p "$deps/maven/$d" || continue; dir="$d"; }
    tmp="$deps/maven/$d/.conveyor-$me-${f##*/}"
    if cp -p "$repo/$f" "$tmp" && mv -f "$tmp" "$target"; then saved=$((saved + 1)); else rm -f "$tmp"; fi
  done < "$1"
}
# the files of the run's repository worth keeping (not failed downloads, partial files or ours)
files() { (cd "$repo" && find . -type f "$@" ! -name '*.lastUpdated' ! -name '*.part' ! -name '.conveyor-*'); }
# what the run changed, then what it added (a download may keep the server's older time)
files -newer "$stamp" > "$stamp.changed"
save_maven "$stamp.changed" no
files > "$stamp.all"
save_maven "$stamp.all" yes
[ "$saved" -eq 0 ] || say "$saved new or changed file(s) put into the Maven cache"
mkdir -p "$deps/.trash"
for budget in ${CONVEYOR_CACHE_BUDGETS:-}; do
  name="${budget%%=*}"
  used="$(du -sk "$deps/$name" 2>/dev/null | cut -f1)"
  if [ "${used:-0}" -gt "${budget#*=}" ] && mv "$deps/$name" "$deps/.trash/$name-$me" 2>/dev/null; then
    touch "$deps/.trash/$name-$me"
    say "the $name cache held ${used} KiB, over its budget of ${budget#*=} KiB: emptied (the next run starts it again)"
  fi
done
find "$deps/.trash" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
exit "$status"
