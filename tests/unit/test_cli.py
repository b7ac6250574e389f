"""`alembic-operator`'s command line: one tree, every command listed once, `--help` everywhere (and nothing else
done), plain text help; the packaging metadata `pip install` reads."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from alembic_operator import cli

REPO = Path(__file__).resolve().parents[2]
ENTRY = Path(sys.executable).parent / "alembic-operator"
SPHINX = re.compile(r":(func|mod|class|meth|attr|data|exc):`|``")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _paths() -> Iterator[tuple[str, ...]]:
    """Every command of the tree, as the words that name it (each command's branch fully built)."""
    for name in _subcommands(cli.build_parser()):
        yield (name,)
        for sub in _subcommands(_subcommands(cli.build_parser([name]))[name]):
            yield name, sub


def _help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        rc = cli.main([*path, "--help"])
        raise SystemExit(rc)  # check's own parser returns the code instead of exiting
    assert exit_.value.code in (0, None), path
    out, err = capsys.readouterr()
    assert err == "", (path, err)
    return out


def test_the_tree_lists_every_command_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(_subcommands(cli.build_parser())) == ["run", "job", "check", "crd"]
    jobs = _subcommands(_subcommands(cli.build_parser(["job"]))["job"])
    assert sorted(jobs) == ["backup", "current", "install-runner", "rehearsal-restore", "restore", "scan"]
    top, job = _help((), capsys), _help(("job",), capsys)
    for name in ("run", "job", "check", "crd"):
        assert len(re.findall(rf"^    {name}( |$)", top, re.M)) == 1, top
    for name in jobs:
        assert len(re.findall(rf"^    {name}( |$)", job, re.M)) == 1, job
    # The top level's one line about `job` names exactly the commands its branch has.
    line = dict(cli.COMMANDS)["job"]
    assert sorted(re.findall(r"[a-z-]+", line.split("(", 1)[1])) == sorted(jobs)


def test_every_command_prints_plain_usage_on_help_and_does_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    paths = list(_paths())
    assert ("job", "install-runner") in paths and ("crd",) in paths and ("run",) in paths
    for path in [(), *paths]:
        out = _help(path, capsys)
        assert out.startswith(f"usage: {' '.join(('alembic-operator', *path))}"), (path, out[:200])
        assert not SPHINX.search(out), (path, out)
    assert list(tmp_path.iterdir()) == []


def test_install_runner_help_through_the_installed_entry_point(tmp_path: Path) -> None:
    """It once wrote the runner to a file named `--help` and exited 0."""
    proc = subprocess.run([str(ENTRY), "job", "install-runner", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: alembic-operator job install-runner [-h] DEST"), proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_job_command_without_its_arguments_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for path in (("job",), ("job", "install-runner"), ("job", "backup"), ("bogus",)):
        with pytest.raises(SystemExit) as exit_:
            cli.main(list(path))
        assert exit_.value.code == 2, path
        assert "usage: alembic-operator" in capsys.readouterr().err


def test_crd_prints_the_crd_and_names_every_generated_file(capsys: pytest.CaptureFixture[str]) -> None:
    from alembic_operator import crdgen

    assert cli.main(["crd"]) == 0
    assert capsys.readouterr().out == crdgen.crd_yaml()
    assert set(crdgen.outputs()) == set(crdgen.GENERATED)
    make = (REPO / "Makefile").read_text()
    target = make.split("\ncrd: venv\n", 1)[1].split("\n\n", 1)[0]
    assert target.strip() == "$(VENV)/bin/alembic-operator crd --write", target  # make crd writes that same list


def test_the_license_is_an_spdx_expression() -> None:
    """A TOML table for project.license is deprecated (setuptools stops reading it on 2027-02-18)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    requires = project["build-system"]["requires"]
    assert "setuptools>=77" in requires, requires  # the first setuptools that reads the SPDX form


def test_every_duration_flag_says_its_unit() -> None:
    """The migration lock's wait and the database session's lock_timeout were `--lock-timeout` (seconds) and
    `--db-lock-timeout` (milliseconds) side by side: a flag that takes a duration names its unit."""
    from alembic_operator.runner import cli as runner_cli

    parsers = [runner_cli.build_parser(), cli.build_parser(["job"])]
    flags: set[str] = set()
    while parsers:
        parser = parsers.pop()
        parsers += _subcommands(parser).values()
        flags |= {flag for action in parser._actions for flag in action.option_strings}
    timed = {flag for flag in flags if re.search(r"timeout|wait|deadline|interval", flag)}
    assert {"--lock-wait-seconds", "--db-lock-timeout-ms", "--db-statement-timeout-ms"} <= timed
    assert all(flag.endswith(("-seconds", "-ms")) for flag in timed), timed


def test_the_other_command_lines_print_plain_help(capsys: pytest.CaptureFixture[str]) -> None:
    """kubectl dbm (its own entry point), the re-vendoring tool and the runner: plain text too."""
    from alembic_operator.dbm import cli as dbm_cli
    from alembic_operator.k8s_openapi import __main__ as k8s_openapi_main
    from alembic_operator.runner import cli as runner_cli

    dbm = dbm_cli._parser()
    parsers = [dbm, *_subcommands(dbm).values(), runner_cli.build_parser()]
    texts = [p.format_help() for p in parsers]
    with pytest.raises(SystemExit) as exit_:
        k8s_openapi_main.main(["--help"])
    assert exit_.value.code == 0
    texts.append(capsys.readouterr().out)
    for text in texts:
        assert text.startswith("usage: ") and not SPHINX.search(text), text
