"""kubectl dbm's question before it changes something: only a person's yes on a terminal goes on."""

from __future__ import annotations

import io

import pytest

from alembic_operator.dbm.ask import Refused, confirm


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "yes"), [("y\n", True), ("YES\n", True), ("\n", False), ("n\n", False),
                                             ("sure\n", False), ("", False)])
def test_only_y_or_yes_confirms(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], answer: str,
                                yes: bool) -> None:
    monkeypatch.setattr("sys.stdin", Terminal(answer))
    assert confirm("Approve plan sha256:ab?", instead="--yes") is yes
    assert capsys.readouterr().out == "Approve plan sha256:ab? [y/N] "


def test_no_terminal_is_refused_naming_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # piped input is not a person's answer
    with pytest.raises(Refused, match=r"^not a terminal: pass --hash HASH \(from kubectl dbm plan\) or --yes$"):
        confirm("Approve?", instead="--hash HASH (from kubectl dbm plan) or --yes")
