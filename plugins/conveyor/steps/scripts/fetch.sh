# Init container of the steps that work on the app's code: check out the run's commit.
# usage: fetch.sh URL COMMIT DIR
fetch_commit "$1" "$2" "$3"
