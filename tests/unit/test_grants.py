"""A spec can only use what the platform grants its team, and manifests name images only pinned by digest,
allowed by the platform, or the app's own (pinned to the build's digest when rendered)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor import apps
from conveyor.exceptions import ConfigurationError, RenderError, SpecError
from conveyor.grants import spec_problems
from conveyor.render import ImagePolicy, bind_images
from conveyor.spec import AppSpec, parse_spec
from conveyor.teams import load_platform

REPO = Path(__file__).resolve().parents[2]
PLATFORM = load_platform(REPO / "config" / "platform.yaml")
APPOINTMENTS: dict[str, Any] = yaml.safe_load((REPO / "include" / "apps" / "appointments.yaml").read_text())


def spec_with(**changes: Any) -> AppSpec:
    data = yaml.safe_load(yaml.safe_dump(APPOINTMENTS))
    for path, value in changes.items():
        target = data
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        target[last] = value
    return parse_spec(data, "appointments.yaml")


def problems(spec: AppSpec) -> dict[str, str]:
    return {p.field: p.message for p in spec_problems(spec, PLATFORM)}


def test_the_sample_apps_stay_within_their_grants() -> None:
    specs, errors = apps.load_apps(REPO / "include" / "apps")
    assert errors == [] and {s.name for s in specs} == {"appointments", "reminders", "boot-preject"}


def test_the_ci_cluster_and_production_are_never_dev_targets() -> None:
    ci = problems(spec_with(environments__dev__cluster="k8s_ci"))
    assert "'k8s_ci' is the CI cluster" in ci["environments.dev.cluster"]
    prod = problems(spec_with(environments__dev__cluster="k8s_prod", environments__dev__namespace="prod"))
    assert (
        "'k8s_prod' is a production cluster (granted for prod); dev may not deploy to it"
        in (prod["environments.dev.cluster"])
    )
    other_ns = problems(spec_with(environments__prod__namespace="kube-system"))
    assert (
        "may deploy to the namespaces prod of 'k8s_prod', not to 'kube-system'"
        in other_ns["environments.prod.namespace"]
    )


def test_git_credentials_go_only_where_the_platform_says() -> None:
    elsewhere = problems(spec_with(git__url="https://evil.example.com/steal.git"))
    assert "may only be sent to http://10.88.0.1:3000/" in elsewhere["git.url"]
    assert "host evil.example.com" in elsewhere["git.url"]
    foreign = problems(spec_with(git__connection="gitee"))
    assert "team clinic may not use the connection 'gitee' for git" in foreign["git.connection"]


def test_registry_sonar_webhooks_and_team_must_be_granted() -> None:
    assert "not to 'other'" in problems(spec_with(registry__project="other"))["registry.project"]
    sonar = problems(spec_with(sonar={"enabled": True, "connection": "sonar", "project_key": "x"}))
    assert "may not use the SonarQube connection 'sonar'" in sonar["sonar.connection"]
    hook = problems(spec_with(notifications={"webhooks": ["ops_pager"]}))
    assert "may not send notices through 'ops_pager'" in hook["notifications.webhooks"]
    team = problems(spec_with(team="billing"))
    assert team == {
        "team": "team 'billing' is not declared in the platform file (teams: clinic, middleware); "
        "ask the platform team to add it"
    }


def test_a_broken_platform_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "platform.yaml"
    path.write_text("teams: {Clinic: {}}\nextra: 1\n")
    with pytest.raises(
        ConfigurationError, match="platform.yaml is invalid: .*must be 3-30 lowercase letters and digits"
    ):
        load_platform(path)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_platform(tmp_path / "missing.yaml")


POLICY = ImagePolicy(
    own_repository="harbor.example.com/ks-devops/boot-preject",
    digest="sha256:" + "ab" * 32,
    allowed=lambda image: image.startswith("harbor.example.com/library/"),
)


def pod(*images: str) -> str:
    containers = "".join(f"    - name: c{i}\n      image: {image}\n" for i, image in enumerate(images))
    return f"apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec:\n  containers:\n{containers}"


def test_the_apps_own_image_by_tag_is_pinned_to_the_builds_digest() -> None:
    text, found = bind_images(pod("harbor.example.com/ks-devops/boot-preject:SNAPSHOT-42"), POLICY, "deploy.yml")
    assert found == []
    assert "image: harbor.example.com/ks-devops/boot-preject@sha256:" + "ab" * 32 in text
    assert "SNAPSHOT-42" not in text


def test_pinning_cuts_the_text_in_the_right_place_whatever_characters_and_line_ends_come_first() -> None:
    own = "harbor.example.com/ks-devops/boot-preject:SNAPSHOT-42"
    text = pod("harbor.example.com/library/busybox:1.36", own).replace(
        "metadata: {name: x}", 'metadata: {name: x, annotations: {note: "Überweisung 🚑 für Patienten"}}'
    )
    for variant in (text, text.replace("\n", "\r\n")):
        pinned, found = bind_images(variant, POLICY, "deploy.yml")
        assert found == []
        assert pinned == variant.replace(own, "harbor.example.com/ks-devops/boot-preject@sha256:" + "ab" * 32)


def test_other_images_need_a_digest_or_the_platforms_leave() -> None:
    pinned = "docker.io/library/redis@sha256:" + "cd" * 32
    text, found = bind_images(
        pod(pinned, "harbor.example.com/library/busybox:1.36", "nginx:latest"), POLICY, "deploy.yml"
    )
    assert found == [
        "deploy.yml:11: image 'nginx:latest' is neither pinned by digest (name@sha256:...) nor allowed by the "
        "platform (images.allowed in the platform file); pin it by digest, or ask the platform team to allow it"
    ]
    assert pinned in text and "busybox:1.36" in text


def test_the_apps_own_image_at_another_digest_is_refused() -> None:
    other = "harbor.example.com/ks-devops/boot-preject@sha256:" + "ef" * 32
    _, found = bind_images(pod(other), POLICY, "deploy.yml")
    assert found and "names the app's own image at another digest" in found[0]


def test_images_are_found_in_every_kind_of_workload() -> None:
    cronjob = (
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: x}\nspec:\n  schedule: '* * * * *'\n"
        "  jobTemplate:\n    spec:\n      template:\n        spec:\n          initContainers:\n"
        "            - {name: i, image: 'alpine:3'}\n          containers:\n            - {name: c, image: \"nginx\"}\n"
    )
    _, found = bind_images(cronjob, POLICY, "cron.yaml")
    assert [f.split(":")[1] for f in found] == ["11", "13"]


def test_a_spec_whose_manifests_name_an_unpinned_image_is_a_spec_error(tmp_path: Path) -> None:
    folder = tmp_path / "manifests" / "appointments"
    folder.mkdir(parents=True)
    (folder / "app.yaml").write_text(pod("$IMAGE", "redis:7"))
    spec = spec_with()
    with pytest.raises(SpecError) as error:
        apps.check_app(spec, "appointments.yaml", PLATFORM, tmp_path / "manifests")
    fields = {p.field: p.message for p in error.value.problems}
    assert fields["environments.dev.manifests"].startswith(f"{folder / 'app.yaml'}:9: image 'redis:7'")


def test_rendering_for_a_deploy_pins_and_checks_too(tmp_path: Path) -> None:
    from conveyor.render import manifest_variables, render_folder

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.yaml").write_text(pod("$REGISTRY/$HARBOR_NAMESPACE/$APP_NAME:SNAPSHOT-$BUILD_NUMBER", "redis:7"))
    spec = spec_with()
    variables = manifest_variables(spec, registry="r:5000", build_number="3", branch="main", tag_name="", digest="x")
    policy = apps.image_policy(spec, "r:5000", "sha256:" + "11" * 32, PLATFORM)
    with pytest.raises(RenderError, match=r"a.yaml:9: image 'redis:7' is neither pinned"):
        render_folder(folder, variables, policy)
    (folder / "a.yaml").write_text(pod("$REGISTRY/$HARBOR_NAMESPACE/$APP_NAME:SNAPSHOT-$BUILD_NUMBER"))
    assert "image: r:5000/clinic/appointments@sha256:" + "11" * 32 in render_folder(folder, variables, policy)


def test_the_pusher_counts_only_from_a_git_server_that_records_it() -> None:
    from conveyor.grants import pusher_recorded

    assert pusher_recorded(spec_with(), PLATFORM)  # Conveyor's own Git server
    boot = parse_spec(
        yaml.safe_load((REPO / "include" / "apps" / "boot-preject.yaml").read_text()), "boot-preject.yaml"
    )
    assert not pusher_recorded(boot, PLATFORM)  # gitee: anyone who can push could write the notes ref


def test_connections_must_be_of_the_type_their_use_needs() -> None:
    from conveyor.grants import connection_type_problem

    assert connection_type_problem("kubeconfig", "k8s_dev", "kubernetes") is None
    problem = connection_type_problem("kubeconfig", "registry", "docker")
    assert problem == (
        "The connection 'registry' is of type 'docker', but it is used as a kubeconfig credential, which needs one "
        "of: kubernetes. Fix the connection's type, or the spec."
    )
    assert connection_type_problem("registry", "git_default", "http") is not None


def test_anchors_aliases_and_merge_keys_cannot_smuggle_an_image() -> None:
    """A merge key puts an image where a text-level check would not look; kubectl honours it."""
    merged = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n"
        '    - <<: {image: "harbor.example.com/ks-devops/boot-preject:latest"}\n      name: app\n'
    )
    _, found = bind_images(merged, POLICY, "deploy.yml")
    assert found == ["deploy.yml:6: YAML merge keys (<<) are not allowed in manifests; write the keys out"]
    aliased = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n"
        "    - {name: a, image: &img 'nginx:1'}\n    - {name: b, image: *img}\n"
    )
    _, found = bind_images(aliased, POLICY, "deploy.yml")
    assert found and all("anchors and aliases" in f for f in found)


def test_image_volumes_are_images_too() -> None:
    volume = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: []\n  volumes:\n"
        "    - name: data\n      image: {reference: 'evil.example.com/data:latest'}\n"
    )
    _, found = bind_images(volume, POLICY, "deploy.yml")
    assert found and found[0].startswith("deploy.yml:8: image 'evil.example.com/data:latest' is neither pinned")


def test_a_spec_cannot_name_its_own_approvers_lower_the_quorum_or_allow_self_approval() -> None:
    """Else whoever may edit a spec could approve their own release to production."""
    spec = spec_with(approvals={"approve": {"users": ["mallory"], "allow_self_approval": True}})
    found = [(p.field, p.message.split(" (")[0]) for p in spec_problems(spec, PLATFORM)]
    # approve covers dev and prod here (no approve_prod): both environments' approvers apply.
    self_approval = "team clinic may not let people approve their own change to {}; remove allow_self_approval"
    assert found == [
        ("approvals.approve", "user mallory may not approve releases to dev of team clinic"),
        ("approvals.approve.allow_self_approval", self_approval.format("dev")),
        ("approvals.approve", "user mallory may not approve releases to prod of team clinic"),
        ("approvals.approve.allow_self_approval", self_approval.format("prod")),
    ]
    viewers = problems(spec_with(approvals={"approve": {"roles": ["viewer"]}}))
    assert "role viewer may not approve releases to" in viewers["approvals.approve"]

    boot = yaml.safe_load((REPO / "include" / "apps" / "boot-preject.yaml").read_text())
    boot["approvals"]["approve_prod"]["roles"] = ["admin", "op"]
    found = {p.field: p.message for p in spec_problems(parse_spec(boot, "boot-preject.yaml"), PLATFORM)}
    assert "role op may not approve releases to prod of team middleware" in found["approvals.approve_prod"]


def test_the_platform_sets_the_least_quorum() -> None:
    from conveyor.teams import Platform

    data = PLATFORM.model_dump()
    data["teams"]["clinic"]["approvers"]["prod"]["min_required"] = 3
    found = {p.field: p.message for p in spec_problems(spec_with(), Platform.model_validate(data))}
    # appointments' approve_prod asks for 2 of alice, bob and carol
    assert found == {
        "approvals.approve_prod.required": "releases to prod need at least 3 approvals; this gate asks for 2"
    }


def test_two_spec_files_for_one_app_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Else the DAG could be built from one file and the run read the other."""
    for name in ("appointments.yaml", "appointments.yml"):
        (tmp_path / name).write_text((REPO / "include" / "apps" / "appointments.yaml").read_text())
    monkeypatch.setenv("AIRFLOW__CONVEYOR__APPS_FOLDER", str(tmp_path))
    specs, errors = apps.load_apps(tmp_path)
    assert specs == [] and len(errors) == 2
    assert "two spec files for app 'appointments' (appointments.yaml, appointments.yml); keep one" in str(errors[0])
    assert apps.spec_path("appointments") is None


def test_no_app_pushes_into_the_step_images_project(tmp_path: Path) -> None:
    """Every team's pipelines run the step images with their credentials: an app whose images would land
    beside them (and could replace a tag-pinned one) is refused, naming the field."""
    data = yaml.safe_load(yaml.safe_dump(APPOINTMENTS))
    data["registry"]["project"] = "conveyor"
    path = tmp_path / "appointments.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = parse_spec(data, str(path))
    with pytest.raises(SpecError, match=r"registry\.project.*'conveyor' holds Conveyor's step images"):
        apps.check_app(spec, str(path), PLATFORM, REPO / "include" / "manifests")


def test_production_is_never_the_first_environment() -> None:
    """prod gets releases only: first, it would get every approved build of every branch, untagged."""
    first = problems(
        spec_with(
            environments=[
                {"name": "prod", "cluster": "k8s_prod", "namespace": "prod", "manifests": "appointments"},
                {"name": "dev", "cluster": "k8s_dev", "namespace": "dev", "manifests": "appointments"},
            ]
        )
    )
    assert "prod gets releases only, so it cannot be the app's first environment" in first["environments.prod"]
    alone = problems(
        spec_with(
            environments=[{"name": "prod", "cluster": "k8s_prod", "namespace": "prod", "manifests": "appointments"}],
            approvals__approve_prod=None,
        )
    )
    assert "cannot be the app's first environment" in alone["environments.prod"]
