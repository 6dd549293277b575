"""The shapes the approval API answers and accepts (documented in ``/conveyor/openapi.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

GateStatusName = Literal["not_open", "waiting", "approved", "rejected", "expired", "superseded", "closed"]


class BuildInfo(BaseModel):
    commit: str | None = None
    digest: str | None = None
    branch: str | None = None
    build_number: int | None = None
    release_tag: str | None = None
    message: str | None = None
    author: str | None = None
    pusher: str | None = Field(default=None, description="who pushed the commit, as the Git server authenticated them")
    manifests: str | None = Field(
        default=None, description="sha256 over the rendered manifests of the environments the gate releases to"
    )


class PolicyInfo(BaseModel):
    """The gate's policy as the run started with it (later edits of the spec do not apply to the run)."""

    users: list[str]
    roles: list[str]
    required: int
    allow_self_approval: bool
    timeout_seconds: int
    spec_hash: str = Field(default="", description="sha256 of the app spec as the run started with it")


class DecisionInfo(BaseModel):
    decision: Literal["approve", "reject"]
    user: str
    roles: list[str]
    commit: str
    digest: str
    manifests: str = Field(default="", description="the manifests hash the decision is bound to")
    reason: str
    at: str
    client: str


class ManifestChange(BaseModel):
    environment: str
    hash: str = Field(description="sha256 of the rendered manifests; a decision is bound to it")
    rendered: str = Field(description="the manifests this build would apply, rendered")
    baseline: str | None = Field(
        default=None, description="what the diff compares against, e.g. 'deployed by run X on <date>'; None if never"
    )
    diff: str = Field(description="unified diff of the rendered manifests against the baseline")
    error: str | None = Field(default=None, description="why the manifests could not be rendered, if they could not")


class CheckResult(BaseModel):
    step: str
    state: str | None = Field(description="the step's task state in this run")
    summary: str = Field(default="", description="e.g. the tests' or the quality gate's result, when known")


class GateInfo(BaseModel):
    app: str
    run_id: str
    gate: str
    releases_to: list[str]
    task_state: str | None
    status: GateStatusName
    link: str = Field(default="", description="the gate's decision page")
    expires_at: str | None = Field(default=None, description="when the gate counts as rejected if still undecided")
    superseded_by: str | None = Field(default=None, description="the newer run that superseded this gate, if any")
    build: BuildInfo
    policy: PolicyInfo
    approvals: list[str]
    required: int
    decisions: list[DecisionInfo]
    manifests: list[ManifestChange] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    triggered_by: str | None
    can_decide: bool
    why_not: str | None = Field(default=None, description="why the current user cannot decide, if they cannot")


class GateList(BaseModel):
    gates: list[GateInfo]


class DecisionRequest(BaseModel):
    commit: str = Field(pattern=r"^[0-9a-f]{40}$", description="the commit SHA the decider was shown")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="the image digest the decider was shown")
    manifests: str | None = Field(
        default=None,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="the manifests hash the decider was shown (GateInfo.build.manifests); checked when given",
    )
    reason: str = Field(default="", max_length=2000, description="why; required for a reject")


class AuditEvent(BaseModel):
    """A decision recorded or refused, or a deploy step's release check verified or refused."""

    at: str
    app: str
    run_id: str
    gate: str
    action: str
    outcome: Literal["recorded", "refused", "verified"]
    status_code: int
    why: str = Field(description="why a decision or deploy was refused (empty otherwise)")
    user: str
    roles: list[str]
    commit: str
    digest: str
    manifests: str = ""
    reason: str = ""
    client: str = ""


class AuditTrail(BaseModel):
    events: list[AuditEvent]


class ErrorBody(BaseModel):
    detail: str
