# sonar: run the SonarScanner (its arguments) with the quality gate wait, then hand on its exit code and the id
# of its analysis task, from which the operator reads the quality gate's status and conditions in SonarQube and
# keeps them in Conveyor's records. Exits 0 whenever it could report: the operator fails the step when the gate
# failed. Runs in the scanner image (bash, coreutils, no jq).
# usage: sonar.sh SCANNER_ARG...
task_file=/workspace/conveyor/sonar/report-task.txt
mkdir -p "${task_file%/*}"
set +e
sonar-scanner "$@" "-Dsonar.scanner.metadataFilePath=$task_file"
code=$?
set -e
task=""
if [[ -f "$task_file" ]]; then
  task="$(sed -n 's/^ceTaskId=//p' "$task_file" | head -n 1 | tr -d '[:space:]')"
fi
if [[ ! "$task" =~ ^[A-Za-z0-9_-]{1,100}$ ]]; then
  say "the scanner left no analysis task id (no $task_file); the quality gate cannot be read"
  task=""
fi
say "the scanner exited with $code; analysis task ${task:-none}"
printf '{"exit_code": %d, "ce_task_id": "%s"}\n' "$code" "$task" | xcom
