"""Output: for people (default), JSON (--format json) and JUnit XML (--junit FILE). Everything written passes
through the caller's redactor."""

from __future__ import annotations

import json
from typing import NotRequired, TypedDict
from xml.etree import ElementTree as ET

from .model import CHECKS, CheckResult, Finding, FindingJson, Report, Severity, Status

_MARK = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}
_SUITE = "alembic-operator check"


def _ordered(report: Report) -> list[CheckResult]:
    return [report.checks[name] for name in CHECKS if name in report.checks]


def _findings(report: Report) -> list[Finding]:
    return sorted(report.findings, key=lambda f: CHECKS.index(f.check) if f.check in CHECKS else len(CHECKS))


# --- people -------------------------------------------------------------------------------------------------------


def human(report: Report) -> str:
    lines = [f"alembic-operator check: {report.project} (head {', '.join(report.heads) or 'none'})", ""]
    for result in _ordered(report):
        lines.extend(_human_check(report, result))
    summary = report.summary()
    verdict = "FAILED" if report.exit_code else "OK"
    lines += ["", f"{verdict}: {summary['errors']} error(s), {summary['warnings']} warning(s), "
              f"{summary['infos']} note(s), {summary['allowed']} allowed; {report.seconds:.1f}s "
              f"(exit code {report.exit_code})"]
    return "\n".join(lines) + "\n"


def _human_check(report: Report, result: CheckResult) -> list[str]:
    timing = f" ({result.seconds:.1f}s)" if result.status != "skipped" else ""
    note = f": {result.reason}" if result.reason else ""
    lines = [f"{_MARK[result.status]}  {result.name}{timing}{note}"]
    for found in report.of(result.name):
        lines.extend(_human_finding(found))
    return lines


def _human_finding(found: Finding) -> list[str]:
    level = f"allowed ({found.allowed_by})" if found.allowed_by else found.severity
    where = f" [{found.revision}]" if found.revision else ""
    lines = [f"      {level:<8} {found.rule}{where}: {found.message}"]
    lines.extend(f"               - {detail}" for detail in found.details)
    return lines


# --- JSON ---------------------------------------------------------------------------------------------------------


class CheckJson(TypedDict):
    name: str
    status: Status
    seconds: float
    reason: NotRequired[str]
    findings: int


class ReportJson(TypedDict):
    """The JSON report (`--format json`), version 1."""

    version: int
    ok: bool
    exitCode: int
    project: str
    heads: list[str]
    failOn: Severity
    durationSeconds: float
    summary: dict[str, int]  # errors, warnings, infos, allowed
    checks: list[CheckJson]
    findings: list[FindingJson]


def as_dict(report: Report) -> ReportJson:
    return {
        "version": 1,
        "ok": report.exit_code == 0,
        "exitCode": report.exit_code,
        "project": report.project,
        "heads": report.heads,
        "failOn": report.fail_on,
        "durationSeconds": round(report.seconds, 3),
        "summary": report.summary(),
        "checks": [_check_dict(report, r) for r in _ordered(report)],
        "findings": [f.to_dict() for f in _findings(report)],
    }


def _check_dict(report: Report, result: CheckResult) -> CheckJson:
    reason: _Reason = {"reason": result.reason} if result.reason else {}
    return {"name": result.name, "status": result.status, "seconds": round(result.seconds, 3), **reason,
            "findings": sum(1 for f in report.of(result.name) if f.counts)}


class _Reason(TypedDict, total=False):
    reason: str


def as_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2) + "\n"


def error_json(message: str, exit_code: int) -> str:
    return json.dumps({"version": 1, "ok": False, "exitCode": exit_code, "error": message}, indent=2) + "\n"


# --- JUnit --------------------------------------------------------------------------------------------------------


def junit(report: Report) -> str:
    """One test case per check: failed checks carry one <failure> listing their failing findings, skipped ones a
    <skipped>; warnings, notes and allowed findings go to <system-out>."""
    results = _ordered(report)
    suite = ET.Element("testsuite", name=_SUITE, tests=str(len(results)), time=f"{report.seconds:.3f}",
                       failures=str(sum(r.status == "failed" for r in results)), errors="0",
                       skipped=str(sum(r.status == "skipped" for r in results)))
    for result in results:
        _junit_case(suite, report, result)
    root = ET.Element("testsuites", name=_SUITE)
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _junit_case(suite: ET.Element, report: Report, result: CheckResult) -> None:
    case = ET.SubElement(suite, "testcase", classname="alembic-operator.check", name=result.name,
                         time=f"{result.seconds:.3f}")
    failing = [f for f in report.of(result.name) if report.failing(f)]
    others = [f for f in report.of(result.name) if not report.failing(f)]
    if failing:
        failure = ET.SubElement(case, "failure", type=failing[0].rule,
                                message=f"{len(failing)} finding(s): " + "; ".join(f.rule for f in failing[:10]))
        failure.text = "\n".join(line for f in failing for line in _human_finding(f))
    elif result.status == "skipped":
        ET.SubElement(case, "skipped", message=result.reason)
    if others:
        ET.SubElement(case, "system-out").text = "\n".join(line for f in others for line in _human_finding(f))


def junit_error(message: str) -> str:
    suite = ET.Element("testsuite", name=_SUITE, tests="1", failures="0", errors="1", skipped="0")
    case = ET.SubElement(suite, "testcase", classname="alembic-operator.check", name="check")
    ET.SubElement(case, "error", message=message).text = message
    root = ET.Element("testsuites", name=_SUITE)
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
