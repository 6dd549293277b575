"""The step scripts find a branch or tag by its exact name: `git ls-remote URL refs/heads/main` also lists
refs that merely end so (x/refs/heads/main), which anyone who may push a branch could plant to have runs of
main build their code. Run with bash against a local repository, as the checkout and tag pods run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conveyor.steps.common import script

LIB = script("checkout").split("\n# checkout:", 1)[0]  # lib.sh, as the checkout pod gets it


def git(*args: str, cwd: Path) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository whose main and tag v1.0.0 are at one commit, with decoys at another."""
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    git("init", "-q", "--bare", str(remote), cwd=tmp_path)
    git("init", "-q", str(work), cwd=tmp_path)
    git("commit", "-q", "--allow-empty", "-m", "reviewed", cwd=work)
    good = git("rev-parse", "HEAD", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "planted", cwd=work)
    bad = git("rev-parse", "HEAD", cwd=work)
    git("tag", "-a", "-m", "release", "v1.0.0", good, cwd=work)
    git(
        "push",
        "-q",
        str(remote),
        f"{good}:refs/heads/main",
        f"{bad}:refs/heads/a/refs/heads/main",
        "v1.0.0",
        f"{bad}:refs/tags/zz/refs/tags/v1.0.0",
        cwd=work,
    )
    return remote, good, bad


def remote_ref(remote: Path, ref: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", LIB + '\nremote_ref "$1" "$2"', "t", str(remote), ref],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_decoy_ref_ending_in_the_branchs_name_is_not_the_branch(repo: tuple[Path, str, str]) -> None:
    remote, good, _ = repo
    assert remote_ref(remote, "refs/heads/main").stdout.strip() == good


def test_a_tag_is_peeled_to_its_commit_and_a_decoy_tag_is_ignored(repo: tuple[Path, str, str]) -> None:
    remote, good, _ = repo
    assert remote_ref(remote, "refs/tags/v1.0.0").stdout.strip() == good


def test_a_missing_ref_is_empty_and_an_unreachable_repository_fails_saying_so(
    repo: tuple[Path, str, str], tmp_path: Path
) -> None:
    remote, _, _ = repo
    assert remote_ref(remote, "refs/heads/nope").stdout.strip() == ""
    gone = remote_ref(tmp_path / "nowhere.git", "refs/heads/main")
    assert gone.returncode == 1 and "cannot reach" in gone.stderr
