"""The check cache (conveyor.check_cache): a manifests check whose inputs have not changed is not run again, and
any change to what it read (a file, the spec's values, the platform's allowed images, Conveyor's code) runs it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor import apps, check_cache
from conveyor.exceptions import SpecError
from conveyor.spec import parse_spec
from conveyor.teams import Platform, load_platform

REPO = Path(__file__).resolve().parents[2]
APPOINTMENTS: dict[str, Any] = yaml.safe_load((REPO / "include" / "apps" / "appointments.yaml").read_text())
DEPLOYMENT = (
    "apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec:\n  containers:\n"
    "    - name: app\n      image: $IMAGE\n    - name: cache\n      image: {other}\n"
)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """The folders really rendered, in order (the render itself runs as always)."""
    monkeypatch.setenv("AIRFLOW__CONVEYOR__CHECK_CACHE_FOLDER", str(tmp_path / "cache"))
    seen: list[Path] = []
    real = apps.render_folder

    def render(folder: Path, *args: Any, **kwargs: Any) -> str:
        seen.append(folder)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(apps, "render_folder", render)
    return seen


def manifests(tmp_path: Path, other: str) -> Path:
    folder = tmp_path / "manifests" / "appointments"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.yaml").write_text(DEPLOYMENT.format(other=other))
    return tmp_path / "manifests"


def problems(root: Path, platform: Platform, **spec_changes: Any) -> list[str]:
    data = {**APPOINTMENTS, **spec_changes}
    file = f"{data['name']}.yaml"
    spec = parse_spec(data, file)
    try:
        apps.check_app(spec, file, platform, root)
    except SpecError as exc:
        return [p.message for p in exc.problems if p.field.startswith("environments.")]  # the manifests' only
    return []


def test_an_unchanged_folder_is_not_rendered_again_and_gives_the_same_answer(
    tmp_path: Path, renders: list[Path]
) -> None:
    platform = load_platform(REPO / "config" / "platform.yaml")
    root = manifests(tmp_path, "redis:7")
    first = problems(root, platform)
    assert len(first) == 1 and "image 'redis:7' is neither pinned" in first[0]
    assert problems(root, platform) == first
    assert len(renders) == 1, "the second check of the same files rendered them again"


def test_any_input_that_changed_is_checked_again(tmp_path: Path, renders: list[Path]) -> None:
    platform = load_platform(REPO / "config" / "platform.yaml")
    root = manifests(tmp_path, "redis:7")
    assert problems(root, platform)
    # the file changed: the new image is pinned, so no problem
    manifests(tmp_path, "redis@sha256:" + "ab" * 32)
    assert problems(root, platform) == []
    assert len(renders) == 2
    # the platform now allows redis by tag: a tag that was refused is fine
    manifests(tmp_path, "redis:7")
    assert problems(root, platform)
    allowing = platform.model_copy(update={"images": platform.images.model_copy(update={"allowed": ["redis:*"]})})
    assert problems(root, allowing) == []
    # the spec's values reach the manifests (a variable the file uses): another app name is another render
    assert problems(root, platform, name="appointments-two") == problems(root, platform)
    # each change rendered again (an entry keeps the last inputs of its app and folder only, so going back is one more)
    assert len(renders) == 6


def test_a_new_version_of_conveyor_checks_again(
    tmp_path: Path, renders: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = load_platform(REPO / "config" / "platform.yaml")
    root = manifests(tmp_path, "redis:7")
    problems(root, platform)
    monkeypatch.setattr(check_cache, "code_digest", lambda: "another version")
    problems(root, platform)
    assert len(renders) == 2


def test_a_broken_or_unwritable_cache_only_means_checking(
    tmp_path: Path, renders: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = load_platform(REPO / "config" / "platform.yaml")
    root = manifests(tmp_path, "redis:7")
    expected = problems(root, platform)
    for entry in (tmp_path / "cache").iterdir():
        entry.write_text('{"key": "x", "problems"')  # cut short
    assert problems(root, platform) == expected
    # a forged entry under another key is a miss: the check runs and its answer stands
    for entry in (tmp_path / "cache").iterdir():
        entry.write_text('{"key": "0000", "problems": []}')
    assert problems(root, platform) == expected
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("AIRFLOW__CONVEYOR__CHECK_CACHE_FOLDER", str(blocked))
    assert problems(root, platform) == expected
    assert problems(root, platform) == expected
    assert len(renders) == 5
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".entry-")], "a temporary file was left"


def test_one_entry_per_app_and_folder(tmp_path: Path, renders: list[Path]) -> None:
    platform = load_platform(REPO / "config" / "platform.yaml")
    root = manifests(tmp_path, "redis:7")
    for n in range(3):
        manifests(tmp_path, f"redis:{n}")
        problems(root, platform)
    assert len(os.listdir(tmp_path / "cache")) == 1


def test_a_folder_others_may_write_to_is_not_used(
    tmp_path: Path, renders: list[Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    platform = load_platform(REPO / "config" / "platform.yaml")
    root = manifests(tmp_path, "redis:7")
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("AIRFLOW__CONVEYOR__CHECK_CACHE_FOLDER", str(shared))
    assert problems(root, platform) == problems(root, platform) != []
    assert len(renders) == 2 and list(shared.iterdir()) == []
    assert "Not using the check cache" in caplog.text and "chmod 700" in caplog.text
    # the folder Conveyor makes is its owner's alone
    monkeypatch.setenv("AIRFLOW__CONVEYOR__CHECK_CACHE_FOLDER", str(tmp_path / "made" / "cache"))
    problems(root, platform)
    assert (tmp_path / "made" / "cache").stat().st_mode & 0o777 == 0o700


def test_a_file_that_changes_while_it_is_checked_is_not_kept_under_its_old_contents(
    tmp_path: Path, renders: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = load_platform(REPO / "config" / "platform.yaml")
    root = manifests(tmp_path, "redis:7")  # refused
    real = apps.render_folder

    def pulled_meanwhile(folder: Path, *args: Any, **kwargs: Any) -> str:
        manifests(tmp_path, "redis@sha256:" + "ab" * 32)  # a `git pull` lands between the two reads
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(apps, "render_folder", pulled_meanwhile)
    assert problems(root, platform) == []  # what the render saw: the new file
    monkeypatch.setattr(apps, "render_folder", real)
    manifests(tmp_path, "redis:7")
    assert problems(root, platform), "the answer for the new file was kept under the old file's key"
