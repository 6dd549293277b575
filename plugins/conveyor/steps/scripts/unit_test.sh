# unit_test, once the app's tests have run (the "test" container, which holds no credential): hand on their
# result, the test command's exit code and the summary of the JUnit XML reports it wrote ($reports_py, Conveyor's
# reader), and print each report into the log. Exits 0 whenever it could report: the operator keeps the result in
# Conveyor's records and then fails the step if the tests failed.
# usage: unit_test.sh PATTERN...   (report files relative to the repository, globs)
#   (CONVEYOR_TEST_STATE: where the test container left the exit code)
exit_file="$CONVEYOR_TEST_STATE/exit-code"
[[ -f "$exit_file" ]] || fail "the test container left no exit code; its log above says why (was it killed, e.g. out of memory?)."
code="$(head -c 16 "$exit_file" | tr -d '[:space:]')"
[[ "$code" =~ ^[0-9]{1,3}$ ]] || fail "the test container left '$code' as its exit code; rerun the step."
say "the test command exited with $code; reading its JUnit XML reports ($*)"
# shellcheck disable=SC2154 # reports_py is set before this script's text (common.py SCRIPT_HELPERS)
python3 -c "$reports_py" junit --exit-code "$code" --source /workspace/src -- "$@" | xcom
