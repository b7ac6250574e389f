"""What a check produces: findings with stable rule names, per-check results, the report and its exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, NotRequired, TypedDict

from .. import engines, sqlrules

Severity = Literal["error", "warning", "info"]
Status = Literal["passed", "failed", "skipped"]

EXIT_OK: Final = 0
EXIT_FINDINGS: Final = 1
EXIT_USAGE: Final = 2

CHECKS: Final = ("integrity", "lint", "upgrade", "models", "roundtrip", "live")


class CheckError(Exception):
    """The check cannot run as asked (usage, configuration, an unreachable database): exit code 2."""


@dataclass(frozen=True)
class Rule:
    name: str
    check: str
    severity: Severity
    why: str


def _rule(name: str, check: str, severity: Severity, why: str) -> tuple[str, Rule]:
    return name, Rule(name, check, severity, why)


RULES: Final[dict[str, Rule]] = dict([
    _rule("multiple-heads", "integrity", "error", "The scripts have more than one head: `alembic upgrade head` "
          "is ambiguous. Merge them with `alembic merge heads`."),
    _rule("multiple-bases", "integrity", "warning", "More than one revision has no down_revision (several "
          "independent branches); usually a revision whose down_revision was lost."),
    _rule("duplicate-revision", "integrity", "error", "Two revision files declare the same revision id; Alembic "
          "keeps one of them, silently."),
    _rule("missing-down-revision", "integrity", "error", "A revision's down_revision names a revision that does "
          "not exist (deleted, renamed or not committed)."),
    _rule("unreachable-revision", "integrity", "error", "A revision cannot be reached from base (its ancestry "
          "goes through a missing revision, or loops)."),
    _rule("script-error", "integrity", "error", "A revision file cannot be read or Alembic cannot load the "
          "scripts."),
    _rule("unknown-allow-rule", "integrity", "warning", "An `alembic-operator: allow` comment names a rule that "
          "does not exist."),
    _rule("upgrade-failed", "upgrade", "error", "Upgrading an empty database from base to head failed."),
    _rule("models-without-migration", "models", "error", "The models (env.py's target_metadata) differ from the "
          "schema the migrations build: a model change has no migration, or a migration no model."),
    _rule("no-target-metadata", "models", "warning", "env.py sets no target_metadata, so the models cannot be "
          "compared with the migrations."),
    _rule("downgrade-missing", "roundtrip", "error", "A revision's downgrade() is empty (pass or raise): it "
          "cannot be undone."),
    _rule("downgrade-failed", "roundtrip", "error", "A revision's downgrade() fails."),
    _rule("roundtrip-mismatch", "roundtrip", "error", "After downgrading and upgrading again, the schema differs "
          "from the one the upgrade built."),
    _rule("breaks-previous-release", "lint", "error", "A new revision not marked phase = \"contract\" drops or "
          "renames a table or column the previous release (--previous) uses: it commits while that release still "
          "serves. Add what the new version needs in an expand revision, and mark the one that removes "
          "phase = \"contract\": the operator runs it once the previous release's pods are gone."),
    _rule("behind-head", "live", "info", "The live database is at an older revision than head: the pending "
          "revisions run at the next deployment."),
    _rule("unknown-revision", "live", "error", "The live database is at a revision the scripts do not contain."),
    _rule("live-schema-drift", "live", "error", "The live schema differs from what the models (or the "
          "migrations, at the database's revision) say it is: someone changed it by hand."),
])

LINT_SEVERITY: Final[dict[str, Severity]] = {"destructive": "error", "locking": "warning", "warning": "warning",
                                              "note": "info"}


def known_rule(name: str) -> bool:
    """A check's rule or any engine's scanner's."""
    return (name in RULES or name == sqlrules.UNRENDERABLE.name
            or any(name in engine.rules() for engine in engines.REGISTRY))


class DiffObject(TypedDict, total=False):
    """One difference between models and a database (schema.describe_diffs), as the JSON report lists it."""

    object: str  # table, column, index, unique index, foreign key, type, nullability, server default, comment...
    change: str  # Alembic's operation: add_table, remove_column, modify_type...
    message: str
    table: str | None
    schema: str | None
    column: str
    name: str | None
    type: str
    nullability: str
    columns: list[str]
    references: str
    database: str  # a modified attribute: what the database has
    models: str  # ... and what the models say
    detail: str  # an operation no handler describes


class FindingJson(TypedDict):
    """A finding in the JSON report."""

    check: str
    rule: str
    severity: Severity
    message: str
    revision: str | None
    allowed: bool
    allowedBy: NotRequired[str]
    details: NotRequired[list[str]]
    objects: NotRequired[list[DiffObject]]


@dataclass
class Finding:
    check: str
    rule: str
    message: str
    severity: Severity = "error"
    revision: str | None = None
    details: list[str] = field(default_factory=list)
    objects: list[DiffObject] = field(default_factory=list)
    allowed_by: str | None = None  # "--allow" or the revision file that allows it

    @property
    def counts(self) -> bool:
        return self.allowed_by is None

    def to_dict(self) -> FindingJson:
        out: FindingJson = {"check": self.check, "rule": self.rule, "severity": self.severity,
                               "message": self.message, "revision": self.revision, "allowed": not self.counts}
        if self.allowed_by:
            out["allowedBy"] = self.allowed_by
        if self.details:
            out["details"] = self.details
        if self.objects:
            out["objects"] = self.objects
        return out


def finding(rule: str, message: str, **kwargs: Any) -> Finding:
    """A finding of one of RULES, with the rule's check and severity."""
    known = RULES[rule]
    return Finding(check=known.check, rule=rule, message=message, severity=known.severity, **kwargs)


@dataclass
class CheckResult:
    name: str
    status: Status = "passed"
    reason: str = ""  # why it was skipped, or a note on what it covered
    seconds: float = 0.0


@dataclass
class Report:
    project: str
    fail_on: Severity = "error"
    heads: list[str] = field(default_factory=list)
    checks: dict[str, CheckResult] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *found: Finding) -> None:
        self.findings.extend(found)

    def skip(self, check: str, reason: str) -> None:
        self.checks[check] = CheckResult(check, "skipped", reason)

    def failing(self, f: Finding) -> bool:
        levels = ("error",) if self.fail_on == "error" else ("error", "warning")
        return f.counts and f.severity in levels

    def of(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def finish(self) -> None:
        for result in self.checks.values():
            if any(self.failing(f) for f in self.of(result.name)):
                result.status = "failed"

    @property
    def exit_code(self) -> int:
        return EXIT_FINDINGS if any(self.failing(f) for f in self.findings) else EXIT_OK

    def summary(self) -> dict[str, int]:
        counted = [f for f in self.findings if f.counts]
        return {
            "errors": sum(f.severity == "error" for f in counted),
            "warnings": sum(f.severity == "warning" for f in counted),
            "infos": sum(f.severity == "info" for f in counted),
            "allowed": len(self.findings) - len(counted),
        }
