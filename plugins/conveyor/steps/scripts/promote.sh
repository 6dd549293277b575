# push: promote the build's digest to another tag (latest) without rebuilding.
# usage: promote.sh REPOSITORY DIGEST TAG
promote "$1" "$2" "$3" move
