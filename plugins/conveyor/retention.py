"""Which SNAPSHOT images of an app the registry may lose: one pure decision from the registry's tags
and digests, Conveyor's records and the retention policy, with the reason for every image.

The policy (``[conveyor] snapshot_keep`` and ``snapshot_days``): per app and branch, keep the newest
``keep`` SNAPSHOT builds and every build younger than ``days``; delete the other SNAPSHOT builds. An
image (a digest: deleting it removes every tag it has) is never deleted when

- a tag that is not a SNAPSHOT tag points at it (``latest``, a release tag such as ``v1.2.3``);
- a deployment record that is ``applying`` or ``succeeded`` names it, in any environment, ever;
- it is the newest build of its branch (also when ``keep`` would allow less);
- its run is still queued or running in Airflow (a gate may still show it, a deploy may apply it);
- Conveyor has no records of its build (records archived, or pushed by something else): Conveyor
  deletes only what it knows it built, so a lost or new records database deletes nothing;
- any one of its builds is kept (two builds may share a digest).

Nothing here talks to a registry or to Airflow; :mod:`conveyor.registry` lists and deletes,
``conveyor prune`` gathers the facts and calls :func:`plan`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from conveyor import settings
from conveyor.exceptions import ConfigurationError
from conveyor.records import AppRecords
from conveyor.spec import AppSpec

# The tags the build step pushes (conveyor/steps/build.py, snapshot_tags): SNAPSHOT-<branch>-<n>, with
# the branch made safe for a tag, and SNAPSHOT-<n>, both on one digest.
SNAPSHOT_NUMBER = re.compile(r"SNAPSHOT-(?P<number>[0-9]+)")
SNAPSHOT_BRANCH = re.compile(r"SNAPSHOT-(?P<branch>[A-Za-z0-9_.-]+)-(?P<number>[0-9]+)")
PROTECTING_RESULTS = frozenset({"applying", "succeeded"})


@dataclass(frozen=True)
class SnapshotPolicy:
    """Keep the newest ``keep`` SNAPSHOT builds per branch and every build younger than ``days`` days."""

    keep: int
    days: int

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ConfigurationError(
                f"snapshot retention keeps {self.keep} builds per branch; it must keep at least 1 "
                "(the newest build of a branch is always kept)."
            )
        if self.days < 0:
            raise ConfigurationError(f"snapshot retention days is {self.days}; use 0 or more days.")

    def describe(self) -> str:
        return f"keep the newest {self.keep} SNAPSHOT builds per branch and every build younger than {self.days} days"


def platform_policy() -> SnapshotPolicy:
    """The platform-wide policy from ``[conveyor] snapshot_keep`` and ``snapshot_days``."""
    keep, days = settings.snapshot_retention()
    return SnapshotPolicy(keep=keep, days=days)


def app_policy(spec: AppSpec, platform_default: SnapshotPolicy) -> SnapshotPolicy:
    """The snapshot policy of one app: its spec's ``retention`` where it sets one, else the platform's
    (``[conveyor] snapshot_keep`` / ``snapshot_days``)."""
    own = spec.retention
    return SnapshotPolicy(
        keep=own.keep if own.keep is not None else platform_default.keep,
        days=own.days if own.days is not None else platform_default.days,
    )


def snapshot_build_number(tag: str) -> int | None:
    """The build number of a SNAPSHOT tag (``SNAPSHOT-main-12``, ``SNAPSHOT-12``), None for any other tag."""
    found = SNAPSHOT_NUMBER.fullmatch(tag) or SNAPSHOT_BRANCH.fullmatch(tag)
    return int(found["number"]) if found else None


@dataclass(frozen=True)
class RegistryImage:
    """One image (manifest digest) of a repository and every tag that points at it."""

    digest: str
    tags: frozenset[str]


def images_from_tags(tag_digests: Mapping[str, str]) -> list[RegistryImage]:
    """Group a repository's tag → digest map by digest."""
    by_digest: dict[str, set[str]] = {}
    for tag, digest in tag_digests.items():
        by_digest.setdefault(digest, set()).add(tag)
    return [RegistryImage(digest, frozenset(tags)) for digest, tags in sorted(by_digest.items())]


@dataclass(frozen=True)
class RecordedBuild:
    """What the records say about one build number: its run, branch and when the run started."""

    build_number: int
    run_id: str
    branch: str
    started_at: datetime


@dataclass(frozen=True)
class RecordFacts:
    """What the policy needs from an app's records."""

    builds: Mapping[int, RecordedBuild]
    # digest -> why it counts as deployed ("prod: succeeded, run ...")
    deployed: Mapping[str, str]
    # run id -> the digests its build step recorded
    run_digests: Mapping[str, frozenset[str]] = field(default_factory=dict)


def facts_from_records(records: AppRecords) -> RecordFacts:
    builds: dict[int, RecordedBuild] = {}
    run_digests: dict[str, frozenset[str]] = {}
    for run in records.runs.values():
        run_digests[run.run_id] = frozenset(b.digest for b in run.builds)
        if run.started is None:
            continue
        checkout = run.checked_out
        branch = checkout.branch if checkout is not None and checkout.branch else run.started.branch
        builds[run.started.build_number] = RecordedBuild(
            run.started.build_number, run.run_id, branch, run.started.run_after_at
        )
    deployed: dict[str, str] = {}
    for d in records.deployments:
        if d.result in PROTECTING_RESULTS:
            deployed[d.digest] = f"{d.environment}: {d.result}, {d.describe()}"
    return RecordFacts(builds=builds, deployed=deployed, run_digests=run_digests)


@dataclass(frozen=True)
class Verdict:
    """What happens to one image, and why."""

    image: RegistryImage
    delete: bool
    reasons: tuple[str, ...]

    @property
    def digest(self) -> str:
        return self.image.digest

    def describe(self) -> str:
        tags = ", ".join(sorted(self.image.tags))
        return f"{'delete' if self.delete else 'keep'} {self.digest} ({tags}): {'; '.join(self.reasons)}"


@dataclass(frozen=True)
class Plan:
    """The verdict on every image of one repository."""

    repository: str
    policy: SnapshotPolicy
    verdicts: tuple[Verdict, ...]

    @property
    def to_delete(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.delete]


def _numbers(image: RegistryImage) -> set[int]:
    return {n for t in image.tags if (n := snapshot_build_number(t)) is not None}


def _age(now: datetime, then: datetime) -> str:
    days = (now - then).days
    return "today" if days < 1 else f"{days} day{'s' if days != 1 else ''} old"


def plan(
    repository: str,
    images: Iterable[RegistryImage],
    facts: RecordFacts,
    active_runs: Iterable[str],
    policy: SnapshotPolicy,
    now: datetime,
) -> Plan:
    """Decide, for every image of an app's repository, whether the policy deletes it (see the module's
    docstring for the rules). ``active_runs``: the app's runs that Airflow has queued or running."""
    images = list(images)
    active = set(active_runs)
    protected_by_run: dict[str, str] = {}
    for run_id in sorted(active):
        for digest in facts.run_digests.get(run_id, ()):
            protected_by_run.setdefault(digest, run_id)

    # Rank the recorded builds present in the registry, newest first, per branch.
    present = {n for image in images for n in _numbers(image)}
    per_branch: dict[str, list[int]] = {}
    for n in sorted(present, reverse=True):
        if n in facts.builds:
            per_branch.setdefault(facts.builds[n].branch, []).append(n)
    rank = {n: i for numbers in per_branch.values() for i, n in enumerate(numbers)}
    young = timedelta(days=policy.days)

    verdicts: list[Verdict] = []
    for image in images:
        others = sorted(t for t in image.tags if snapshot_build_number(t) is None)
        numbers = sorted(_numbers(image), reverse=True)
        keep: list[str] = []
        if others:
            keep.append(f"tagged {', '.join(others)}")
        if image.digest in facts.deployed:
            keep.append(f"deployed ({facts.deployed[image.digest]})")
        build_runs = {facts.builds[n].run_id for n in numbers if n in facts.builds}
        if image.digest in protected_by_run and protected_by_run[image.digest] not in build_runs:
            keep.append(f"run {protected_by_run[image.digest]}, still running, built it")
        why_deletable: list[str] = []
        for n in numbers:
            build = facts.builds.get(n)
            if build is None:
                keep.append(f"no records of build #{n} (Conveyor deletes only builds it recorded)")
                continue
            if build.run_id in active:
                keep.append(f"build #{n}: its run {build.run_id} is still running")
            elif rank[n] == 0:
                keep.append(f"build #{n} is the newest build of branch {build.branch}")
            elif rank[n] < policy.keep:
                keep.append(f"build #{n} is one of the {policy.keep} newest builds of branch {build.branch}")
            elif now - build.started_at < young:
                keep.append(f"build #{n} is younger than {policy.days} days ({_age(now, build.started_at)})")
            else:
                why_deletable.append(
                    f"build #{n} of branch {build.branch}, {_age(now, build.started_at)}, "
                    f"newer builds of the branch: {rank[n]}"
                )
        if keep:
            verdicts.append(Verdict(image, False, tuple(keep)))
        elif why_deletable:
            verdicts.append(Verdict(image, True, tuple(why_deletable)))
        else:  # no tag at all: nothing to decide on
            verdicts.append(Verdict(image, False, ("no tags",)))
    # newest build first, images without a SNAPSHOT tag last
    verdicts.sort(key=lambda v: (-max(_numbers(v.image), default=-1), v.digest))
    return Plan(repository, policy, tuple(verdicts))
