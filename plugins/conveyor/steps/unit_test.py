"""The ``unit_test`` step: run the app's test command in its builder image, on the run's commit, and hand on
what its JUnit XML reports say.

The pod's containers, in order:

- ``fetch`` (git credentials): checks out the run's commit;
- ``test`` (none): runs the test command in the builder image and keeps its exit code in the workspace,
  whatever it is, so that a failing run still reports;
- ``base`` (none; the toolbox): reads the exit code and the reports (:mod:`conveyor.reports`, run as it is),
  prints each report's XML into the task log in a collapsed group and hands on the summary. It exits 0 when it
  could report: the operator keeps the summary in Conveyor's records, then fails the task if the tests failed.
"""

from __future__ import annotations

from kubernetes.client import models as k8s

from conveyor.pipeline import Pipeline, Step
from conveyor.steps.caches import dependency_caches
from conveyor.steps.common import (
    SOURCE_DIR,
    TOOLBOX_RESOURCES,
    PodContext,
    fetch_container,
    resources_of,
    run_env,
    script_command,
    step_pod,
    workspace_volume,
)

# Where the test container leaves the test command's exit code for the reporter (the workspace is shared).
STATE_DIR = "/workspace/conveyor/unit-test"
# Runs the test command (its arguments) and keeps its exit code; POSIX sh, which every builder image has.
RUN_TESTS = 'mkdir -p "$CONVEYOR_TEST_STATE"; "$@"; echo "$?" > "$CONVEYOR_TEST_STATE/exit-code"'


def report_patterns(pipeline: Pipeline) -> list[str]:
    """Where the test command's JUnit XML reports are, relative to the repository (globs; spec ``test.report``)."""
    return list(pipeline.spec.test.report)


def build_unit_test_pod(pipeline: Pipeline, step: Step, ctx: PodContext) -> k8s.V1Pod:
    spec = pipeline.spec
    _, workspace = workspace_volume()
    # The app's pip and Maven caches (steps/caches.py): kept between runs, safe under concurrent ones.
    deps = dependency_caches(pipeline, step.id)
    test = k8s.V1Container(
        name="test",
        image=ctx.images.ref(spec.builder),
        image_pull_policy="IfNotPresent",
        command=deps.command(["sh", "-c", RUN_TESTS, f"conveyor-{step.id}", *spec.test.command]),
        working_dir=SOURCE_DIR,
        env=[
            # the run's facts, as the Jenkins pipeline's tests read them (BUILD_NUMBER, COMMIT_SHA, ...)
            *run_env(pipeline, step, ctx.values),
            *(k8s.V1EnvVar(name=k, value=v) for k, v in sorted(spec.test.env.items())),
            k8s.V1EnvVar(name="CONVEYOR_TEST_STATE", value=STATE_DIR),
            *deps.env,
        ],
        volume_mounts=[workspace, *deps.mounts],
        resources=resources_of(pipeline),
    )
    main = k8s.V1Container(
        name="base",
        image=ctx.images.ref("toolbox"),
        command=script_command("unit_test"),
        args=report_patterns(pipeline),
        env=[k8s.V1EnvVar(name="CONVEYOR_TEST_STATE", value=STATE_DIR)],
        # the reporter only reads what the tests left
        volume_mounts=[k8s.V1VolumeMount(name=workspace.name, mount_path=workspace.mount_path, read_only=True)],
        resources=TOOLBOX_RESOURCES,
    )
    return step_pod(
        pipeline,
        step,
        ctx,
        main,
        init_containers=[fetch_container(pipeline, step, ctx), test],
        extra_volumes=list(deps.volumes),
    )
