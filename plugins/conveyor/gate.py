"""The approval gate's core: signed decision records and the rule that says whether a gate opens.

A decision is recorded only by Conveyor's approval API, which signs it with HMAC-SHA256
and the ``[conveyor] approval_signing_key``. The sensor counts only records whose
signature verifies and that name this exact build (app, run, gate, commit SHA, image
digest, hash of the rendered manifests), so a record written any other way, e.g. a raw
Variable edit, never opens a gate.
Nothing here imports Airflow.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from conveyor.spec import ApprovalPolicy

APPROVE = "approve"
REJECT = "reject"


def storage_key(app: str, run_id: str, gate: str) -> str:
    """The Airflow Variable that keeps a gate's decisions (run ids may be long: hashed)."""
    run_hash = hashlib.sha256(run_id.encode()).hexdigest()[:20]
    return f"conveyor.gate.{app}.{gate}.{run_hash}"


@dataclass(frozen=True)
class Build:
    """What a decision is bound to."""

    commit: str
    digest: str
    manifests: str = ""  # sha256 of the rendered manifests of the environments the gate releases to


@dataclass(frozen=True)
class Decision:
    """One person's decision on one gate of one run, for one build."""

    app: str
    run_id: str
    gate: str
    decision: str  # approve | reject
    user: str
    roles: tuple[str, ...]
    commit: str
    digest: str
    reason: str
    at: str  # ISO 8601, UTC
    manifests: str = ""
    client: str = ""
    signature: str = ""

    @property
    def build(self) -> Build:
        """The build this decision was made for."""
        return Build(self.commit, self.digest, self.manifests)

    def payload(self) -> bytes:
        data = asdict(self)
        data.pop("signature")
        data["roles"] = list(self.roles)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes) -> Decision:
        signature = hmac.new(key, self.payload(), hashlib.sha256).hexdigest()
        return Decision(**{**asdict(self), "roles": self.roles, "signature": signature})

    def verifies(self, key: bytes) -> bool:
        expected = hmac.new(key, self.payload(), hashlib.sha256).hexdigest()
        return bool(self.signature) and hmac.compare_digest(expected, self.signature)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Decision | None:
        """A record as stored, or None when it is not even shaped like one."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                app=str(data["app"]),
                run_id=str(data["run_id"]),
                gate=str(data["gate"]),
                decision=str(data["decision"]),
                user=str(data["user"]),
                roles=tuple(str(r) for r in data.get("roles") or ()),
                commit=str(data["commit"]),
                digest=str(data["digest"]),
                reason=str(data.get("reason") or ""),
                at=str(data["at"]),
                manifests=str(data.get("manifests") or ""),
                client=str(data.get("client") or ""),
                signature=str(data.get("signature") or ""),
            )
        except (KeyError, TypeError):
            return None


def load_records(raw: str | None) -> list[Any]:
    """The stored list of records of a gate (whatever its shape; verified later)."""
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    records = data.get("decisions") if isinstance(data, dict) else None
    return records if isinstance(records, list) else []


def dump_records(app: str, run_id: str, gate: str, records: list[Decision]) -> str:
    return json.dumps(
        {"app": app, "run_id": run_id, "gate": gate, "decisions": [r.to_json() for r in records]}, indent=1
    )


def is_author(user: str, author: str | None) -> bool:
    """Whether a user name is the commit author ``Name <email>``: the name, or the e-mail's local part."""
    if not author:
        return False
    name, _, rest = author.partition("<")
    email = rest.rstrip(">").strip()
    candidates = {name.strip().lower(), email.lower(), email.split("@")[0].lower()}
    return user.lower() in candidates - {""}


def may_decide(policy: ApprovalPolicy, user: str, roles: tuple[str, ...] | list[str]) -> bool:
    """Whether the policy lists the user, or one of the user's roles."""
    return user in policy.users or any(role in policy.roles for role in roles)


class GateStatus(StrEnum):
    WAITING = "waiting"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True)
class GateState:
    status: GateStatus
    approvals: tuple[Decision, ...] = ()
    rejection: Decision | None = None
    required: int = 1
    ignored_unsigned: int = 0
    ignored_other_build: int = 0
    ignored_not_approver: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def approvers(self) -> list[str]:
        return [d.user for d in self.approvals]


def evaluate(
    raw_records: list[Any],
    *,
    policy: ApprovalPolicy,
    app: str,
    run_id: str,
    gate: str,
    build: Build,
    key: bytes,
    triggered_by: str | None = None,
    author: str | None = None,
) -> GateState:
    """Whether a gate is approved, rejected or still waiting, from its stored records.

    Counted: records signed with ``key``, for this app/run/gate, bound to ``build``, by a
    user the policy allows (checked again here, not only in the API). One reject ends
    the wait; approvals count once per distinct user; unless the policy allows self-approval,
    approvals by the person who triggered the run or wrote the commit do not count.
    """
    unsigned = other_build = not_approver = 0
    approvals: dict[str, Decision] = {}
    for raw in raw_records:
        record = Decision.from_json(raw)
        if record is None or not record.verifies(key):
            unsigned += 1
            continue
        if (record.app, record.run_id, record.gate) != (app, run_id, gate):
            unsigned += 1
            continue
        if record.build != build:
            other_build += 1
            continue
        if not may_decide(policy, record.user, record.roles):
            not_approver += 1
            continue
        if record.decision == REJECT:
            return GateState(
                GateStatus.REJECTED,
                tuple(approvals.values()),
                record,
                policy.required,
                unsigned,
                other_build,
                not_approver,
            )
        if record.decision == APPROVE:
            own = record.user == triggered_by or is_author(record.user, author)
            if own and not policy.allow_self_approval:
                not_approver += 1
                continue
            approvals.setdefault(record.user, record)
    status = GateStatus.APPROVED if len(approvals) >= policy.required else GateStatus.WAITING
    return GateState(status, tuple(approvals.values()), None, policy.required, unsigned, other_build, not_approver)
