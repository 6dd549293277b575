"""Every error Conveyor raises on purpose, so callers can catch one base class.

The tree::

    ConveyorError
    ├── SpecError            an app spec file is invalid (all its problems at once)
    ├── InvalidSpecs         some app specs of a folder are invalid (every file's problems)
    ├── ConfigurationError   the Airflow [conveyor] section or images file is wrong
    ├── RenderError          a manifest could not be rendered (unknown variable, bad file)
    ├── TamperedRecords      an app's records were changed outside Conveyor
    ├── LedgerConflict       appending to an app's records kept colliding with other writers
    ├── RunSuperseded        a newer push of the branch or tag superseded a run before it started
    ├── HookRefused          a git push event was refused (bad signature 401, malformed 400)
    ├── StepResultError      a step's result in its pod's log is incomplete, malformed or too large
    └── ApprovalError        an approval decision was refused
        ├── NotFound             no such app, run or gate (404)
        ├── NotAnApprover        the user is not allowed to decide this gate (403)
        ├── GateNotOpen          the gate is not waiting for a decision (409)
        ├── BuildMismatch        the decision names another commit or digest (409)
        └── InvalidDecision      the decision itself is malformed, e.g. a reject without reason (422)
"""

from __future__ import annotations

from dataclasses import dataclass


class ConveyorError(Exception):
    """Base class of every error Conveyor raises on purpose."""


@dataclass(frozen=True)
class SpecProblem:
    """One problem in one app spec file: where it is and how to fix it."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


class SpecError(ConveyorError):
    """An app spec file is invalid; ``problems`` lists every problem found in it."""

    def __init__(self, file: str, problems: list[SpecProblem]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Failed to build the app from '{file}' ({len(problems)} problem(s)):\n{lines}")


class InvalidSpecs(ConveyorError):
    """Some app specs of a folder are invalid; the message lists each file, field and fix."""


class ConfigurationError(ConveyorError):
    """Conveyor's configuration (the [conveyor] section, images file) is wrong or missing."""


class RenderError(ConveyorError):
    """A manifest could not be rendered."""


class TamperedRecords(ConveyorError):
    """An app's records were changed outside Conveyor: an entry edited, missing or added by hand."""


class LedgerConflict(ConveyorError):
    """Appending to an app's records kept colliding with other writers; nothing was written."""


class RunSuperseded(ConveyorError):
    """A newer push of the same branch or tag superseded this run before its checkout started."""

    def __init__(self, by: str, ref: str, commit: str) -> None:
        super().__init__(
            f"Superseded by run {by}: a newer push of {ref} ({commit[:12]}) came before this run started, so it "
            "builds nothing. To build this commit anyway, trigger a new run with its commit."
        )
        self.by = by


class HookRefused(ConveyorError):
    """A git push event was refused; ``status_code`` is the HTTP status to answer (401: who sent it cannot be
    verified; 400: the event cannot be read)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


class StepResultError(ConveyorError):
    """The result a step's script handed on in its pod's log cannot be read: lines of it are missing, it is not
    JSON, or it is larger than a step may hand on (:mod:`conveyor.pod_manager`)."""


class ApprovalError(ConveyorError):
    """An approval decision was refused; ``status_code`` is the HTTP status the API answers."""

    status_code = 400


class NotFound(ApprovalError):
    status_code = 404


class NotAnApprover(ApprovalError):
    status_code = 403


class GateNotOpen(ApprovalError):
    status_code = 409


class BuildMismatch(ApprovalError):
    status_code = 409


class InvalidDecision(ApprovalError):
    status_code = 422
