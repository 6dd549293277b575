"""The platform file's teams as Airflow's multi-team mode gets them: users with their role and teams, a Dag
bundle per team holding only that team's apps, each team's pipelines in its own CI namespace, and each
connection belonging to one team."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

from conveyor.exceptions import ConfigurationError
from conveyor.gate_view import user_roles
from conveyor.grants import spec_problems
from conveyor.spec import load_spec
from conveyor.team_setup import MARKER, write_bundles
from conveyor.teams import Platform, connection_teams, load_platform, simple_auth_users, team_ci

REPO = Path(__file__).resolve().parents[2]
PLATFORM_FILE = REPO / "config" / "platform.yaml"


def platform_with(tmp_path: Path, **changes: Any) -> Path:
    data = yaml.safe_load(PLATFORM_FILE.read_text())
    data.update(changes)
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_sample_teams_become_simple_auth_manager_users_with_their_teams() -> None:
    users = dict(
        (u.split(":")[0], u.split(":")[1:]) for u in simple_auth_users(load_platform(PLATFORM_FILE)).split(",")
    )
    assert users["admin"] == ["admin"]  # every team
    assert users["alice"] == ["user", "clinic"] and users["dave"] == ["user", "clinic"]
    assert users["carol"] == ["viewer", "clinic"]
    assert users["erin"] == ["user", "middleware"] and users["frank"] == ["user", "middleware"]


def test_someone_in_two_teams_has_both() -> None:
    platform = load_platform(PLATFORM_FILE)
    teams = dict(platform.teams)
    teams["middleware"] = teams["middleware"].model_copy(update={"members": {"bob": "developer", "erin": "approver"}})
    both = platform.model_copy(update={"teams": teams})
    assert "bob:user:clinic|middleware" in simple_auth_users(both).split(",")


def test_different_roles_in_two_teams_cannot_be_said_to_the_simple_auth_manager() -> None:
    platform = load_platform(PLATFORM_FILE)
    teams = dict(platform.teams)
    teams["middleware"] = teams["middleware"].model_copy(update={"members": {"carol": "developer"}})
    with pytest.raises(
        ConfigurationError, match=r"carol would be Airflow viewer in clinic, user in middleware.*same kind of role"
    ):
        simple_auth_users(platform.model_copy(update={"teams": teams}))


@pytest.mark.parametrize(
    ("teams", "message"),
    [
        ({"pay-ments": {}}, r"teams: team 'pay-ments' must be 3-30 lowercase letters and digits"),
        ({"ab": {}}, r"team 'ab' must be 3-30"),
        ({"web": {"members": {"alice": "owner"}}}, r"teams\.web\.members\.alice: Input should be 'developer'"),
        ({"web": {"members": {"al:ice": "viewer"}}}, r"teams\.web\.members: 'al:ice' is not a user name"),
        ({"web": {"ci": {"connection": "c", "namespace": "CI_web"}}}, r"teams\.web\.ci\.namespace: 'CI_web' is not"),
        ({"platform": {}}, r"team 'platform' is reserved"),
        ({"web": {"webhooks": ["conveyor_webhook"]}}, r"'conveyor_webhook' is the platform's own connection"),
    ],
)
def test_a_bad_team_is_refused_naming_the_field(tmp_path: Path, teams: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_platform(platform_with(tmp_path, teams=teams))


def test_a_connection_belongs_to_one_team() -> None:
    owners = connection_teams(load_platform(PLATFORM_FILE))
    assert owners["git_default"] == owners["k8s_ci"] == owners["k8s_dev"] == "clinic"
    assert owners["middleware_ci"] == owners["harbor"] == owners["prod-kubeconfig"] == "middleware"
    shared = Platform.model_validate({"teams": {"web": {"sonar": ["sonar"]}, "payments": {"sonar": ["sonar"]}}})
    with pytest.raises(ConfigurationError, match="'sonar' is granted to teams payments and web"):
        connection_teams(shared)


def test_each_team_has_its_bundle_and_only_its_apps_in_it(tmp_path: Path) -> None:
    stale, foreign = tmp_path / "oldteam", tmp_path / "notes"
    stale.mkdir()
    (stale / MARKER).write_text("oldteam\n")
    foreign.mkdir()
    configs = write_bundles(load_platform(PLATFORM_FILE), tmp_path)
    assert [(c["name"], c["team_name"], c["kwargs"]["path"]) for c in configs] == [
        ("conveyor-clinic", "clinic", str(tmp_path / "clinic")),
        ("conveyor-middleware", "middleware", str(tmp_path / "middleware")),
    ]
    assert not stale.exists() and foreign.exists()  # only folders Conveyor made are removed
    clinic = DagBag(dag_folder=str(tmp_path / "clinic"))
    middleware = DagBag(dag_folder=str(tmp_path / "middleware"))
    assert clinic.import_errors == {} and middleware.import_errors == {}
    assert sorted(clinic.dag_ids) == ["appointments", "reminders"]
    assert sorted(middleware.dag_ids) == ["boot-preject"]


def test_a_teams_pipeline_pods_run_in_its_own_ci_namespace() -> None:
    platform = load_platform(PLATFORM_FILE)
    assert (team_ci(platform, "clinic").connection_id, team_ci(platform, "clinic").namespace) == (
        "k8s_ci",
        "conveyor-ci",
    )
    ci = team_ci(platform, "middleware")
    assert (ci.connection_id, ci.namespace) == ("middleware_ci", "middleware-ci")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    for task in bag.dags["boot-preject"].tasks:
        if hasattr(task, "kubernetes_conn_id"):
            assert (task.kubernetes_conn_id, task.namespace) == ("middleware_ci", "middleware-ci")


def test_no_team_deploys_to_a_ci_namespace() -> None:
    spec = load_spec(REPO / "include" / "apps" / "boot-preject.yaml")
    env = spec.environments[0].model_copy(update={"cluster": "middleware_ci", "namespace": "middleware-ci"})
    bad = spec.model_copy(update={"environments": [env, *spec.environments[1:]]})
    assert any("is the CI cluster" in p.message for p in spec_problems(bad, load_platform(PLATFORM_FILE)))


class _User:
    def __init__(self, name: str, role: str) -> None:
        self.name, self.role = name, role

    def get_name(self) -> str:
        return self.name


def test_a_gate_sees_the_users_role_in_the_apps_team() -> None:
    erin = _User("erin", "user")
    assert user_roles(erin, "middleware") == ("user", "approver")
    assert user_roles(erin, "clinic") == ("user",)  # not a member there


def test_the_cluster_gets_each_teams_ci_and_deploy_namespaces() -> None:
    from conveyor.teams import cluster_namespaces

    assert cluster_namespaces(load_platform(PLATFORM_FILE)) == [
        ("ci", "conveyor-ci", "k8s_ci"),
        ("deploy", "dev", "k8s_dev"),
        ("deploy", "staging", "k8s_staging"),
        ("deploy", "prod", "k8s_prod"),
        ("ci", "middleware-ci", "middleware_ci"),
        ("deploy", "middleware", "demo-kubeconfig"),
        ("deploy", "middleware", "prod-kubeconfig"),
    ]


def test_a_connection_id_that_could_name_another_file_is_refused(tmp_path: Path) -> None:
    teams = {"web": {"sonar": ["../../etc/passwd"]}}
    with pytest.raises(ConfigurationError, match=r"teams\.web: '\.\./\.\./etc/passwd' is not a connection id"):
        load_platform(platform_with(tmp_path, teams=teams))


def test_a_teams_bundle_reports_its_own_bad_specs_not_another_teams(tmp_path: Path) -> None:
    from conveyor.dag_builder import check_specs, register_apps
    from conveyor.exceptions import InvalidSpecs

    apps = tmp_path / "apps"
    apps.mkdir()
    for name in ("appointments", "boot-preject"):
        (apps / f"{name}.yaml").write_text((REPO / "include" / "apps" / f"{name}.yaml").read_text())
    broken = yaml.safe_load((REPO / "include" / "apps" / "boot-preject.yaml").read_text())
    broken.update(name="payroll", builder="no such builder!")
    (apps / "payroll.yaml").write_text(yaml.safe_dump(broken))  # team middleware, invalid
    (apps / "garbled.yaml").write_text("name: [unclosed\n")  # no team can be read from it

    with pytest.raises(InvalidSpecs) as clinic:
        check_specs(apps, team="clinic")
    assert "garbled.yaml" in str(clinic.value) and "payroll.yaml" not in str(clinic.value)
    with pytest.raises(InvalidSpecs) as middleware:
        check_specs(apps, team="middleware")
    assert "garbled.yaml" in str(middleware.value) and "payroll.yaml" in str(middleware.value)
    assert sorted(register_apps({}, apps, team="clinic")) == ["appointments"]
    assert sorted(register_apps({}, apps, team="middleware")) == ["boot-preject"]


def test_a_keycloak_users_roles_come_from_their_access_token() -> None:
    import jwt

    class KeycloakUser:  # the shape of the Keycloak auth manager's user: name and access token
        def __init__(self, name: str, roles: list[str]) -> None:
            self.name = name
            self.access_token = jwt.encode({"realm_access": {"roles": roles}}, "k" * 32, algorithm="HS256")

        def get_name(self) -> str:
            return self.name

    admin = KeycloakUser("admin", ["Admin", "SuperAdmin", "offline_access", "default-roles-conveyor"])
    assert user_roles(admin) == ("admin",)
    assert user_roles(KeycloakUser("erin", ["User", "uma_authorization"]), "middleware") == ("user", "approver")


def test_an_app_belongs_to_the_team_the_platform_lists_it_under() -> None:
    platform = load_platform(PLATFORM_FILE)
    spec = load_spec(REPO / "include" / "apps" / "appointments.yaml")
    assert [p.message for p in spec_problems(spec, platform) if p.field == "team"] == []
    # a middleware developer's spec claiming a clinic app's name, or a new app, for the clinic
    for name in ("payroll", "boot-preject"):
        claimed = spec.model_copy(update={"name": name})
        messages = [p.message for p in spec_problems(claimed, platform) if p.field == "team"]
        assert messages and f"'{name}' is not one of team clinic's apps" in messages[0], name
    with pytest.raises(ValueError, match="'appointments' is listed by teams clinic and middleware"):
        Platform.model_validate(
            {"teams": {"clinic": {"apps": ["appointments"]}, "middleware": {"apps": ["appointments"]}}}
        )


@pytest.mark.parametrize(
    ("teams", "message"),
    [
        (
            {
                "web": {"ci": {"connection": "c1", "namespace": "shared"}},
                "pay": {"ci": {"connection": "c2", "namespace": "shared"}},
            },
            "The namespace 'shared' is given to teams pay and web",
        ),
        (
            {
                "web": {
                    "ci": {"connection": "c1", "namespace": "web-ci"},
                    "clusters": {"dev": [{"connection": "d", "namespaces": ["web-ci"]}]},
                }
            },
            "'web-ci' of team web is both its CI namespace and a deploy namespace",
        ),
    ],
)
def test_a_namespace_is_one_teams_and_a_ci_namespace_is_never_deployed_to(teams: dict[str, Any], message: str) -> None:
    from conveyor.teams import cluster_namespaces

    with pytest.raises(ConfigurationError, match=message):
        cluster_namespaces(Platform.model_validate({"teams": teams}))


def test_namespaces_and_projects_are_kubernetes_and_registry_names(tmp_path: Path) -> None:
    bad = {"web": {"clusters": {"dev": [{"connection": "d", "namespaces": ["dev\nkind: ClusterRole"]}]}}}
    with pytest.raises(ConfigurationError, match="is not a Kubernetes namespace name"):
        load_platform(platform_with(tmp_path, teams=bad))
    bad = {"web": {"registries": [{"connection": "r", "projects": ["../base"]}]}}
    with pytest.raises(ConfigurationError, match="'../base' is not a registry project name"):
        load_platform(platform_with(tmp_path, teams=bad))


def test_connections_are_stored_with_their_team_and_ungranted_ones_not_at_all(airflow_db: Path, tmp_path: Path) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    from conveyor.team_setup import sync_airflow

    platform = Platform.model_validate({"teams": {"lab": {"sonar": ["lab_sonar"]}}})
    (tmp_path / "lab_sonar.json").write_text('{"conn_type": "http", "host": "sonar.lab", "password": "s3cret"}')
    (tmp_path / "stray_kube.json").write_text('{"conn_type": "kubernetes", "extra": {"namespace": "x"}}')
    done = sync_airflow(platform, tmp_path)
    assert "connection stray_kube: granted to no team in the platform file, not stored" in done
    (tmp_path / "lab_sonar.json").write_text('{"conn_type": "http", "host": "sonar2.lab", "password": "n3w"}')
    sync_airflow(platform, tmp_path)  # a second start updates what is there
    with create_session() as session:
        stored = {
            c.conn_id: c for c in session.query(Connection).filter(Connection.conn_id.in_(["lab_sonar", "stray_kube"]))
        }
        assert set(stored) == {"lab_sonar"}
        lab = stored["lab_sonar"]
        assert (lab.team_name, lab.host, lab.password) == ("lab", "sonar2.lab", "n3w")
