"""`job(url, *argv)`: runs `alembic-operator job ...` in-process and checks that no secret leaked anywhere (the
Job commands' tests on PostgreSQL and on MariaDB share it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alembic_operator import cli, jobtools

__all__ = ["Run", "job"]


class Run:
    def __init__(self, rc: int, result: dict[str, Any], out: str, err: str) -> None:
        self.rc, self.result, self.out, self.err = rc, result, out, err

    def __repr__(self) -> str:
        return f"Run(rc={self.rc}, result={self.result}, err={self.err[-2000:]})"


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    """job(url, *argv) runs `alembic-operator job ...` in-process; checks that no secret leaked anywhere."""
    secrets: list[str] = []

    def run(url: str | None, *argv: str) -> Run:
        if url is None:
            monkeypatch.delenv(jobtools.URL_ENV, raising=False)
        else:
            monkeypatch.setenv(jobtools.URL_ENV, url)
            password = url.partition("://")[2].split("@", 1)[0].partition(":")[2]
            secrets.extend(s for s in (url, password) if s)
        result_file = tmp_path / "result.json"
        result_file.unlink(missing_ok=True)
        capfd.readouterr()
        rc = cli.main(["job", *argv, "--result-file", str(result_file)])
        out, err = capfd.readouterr()
        text = result_file.read_text()
        assert len(text.encode()) < 3500
        for secret in secrets:
            for where in (out, err, text):
                assert secret not in where
        result = json.loads(text)
        assert json.loads(out.strip().splitlines()[-1]) == result
        assert rc == (0 if result["ok"] else 1)
        if not result["ok"]:
            assert set(result) == {"ok", "reason", "message"} and result["reason"][0].isupper()
        return Run(rc, result, out, err)

    return run
