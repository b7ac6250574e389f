"""The operator's image as the bed builds it from the project's Dockerfile (buildah, a real registry): the unit half,
the Dockerfile and the wheel, is unit/test_image.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from alembic_operator import jobs
from bed import images
from imagebuild import run_in


@pytest.mark.bed
def test_the_image_built_on_the_bed_runs_its_commands(tmp_path: Path) -> None:
    """The project's Dockerfile, built by buildah on the bed's Debian python and postgresql-client: the operator,
    pg_dump/pg_restore where ALEMBIC_OPERATOR_PG_BIN says, the SQL scanner and the runner, as user 65532."""
    ref = images.operator_image()
    out = run_in(ref, "sh", "-c", 'id -u; alembic-operator --help >/dev/null && echo help-ok; '
                                  '"$ALEMBIC_OPERATOR_PG_BIN/pg_dump" --version; '
                                  '"$ALEMBIC_OPERATOR_PG_BIN/pg_restore" --version; pg_dump --version; '
                                  'alembic-operator job scan --help >/dev/null && echo scan-ok; '
                                  'command -v python; ls -A /mnt | wc -l')
    lines = out.splitlines()
    assert lines[0] == str(jobs.OPERATOR_UID) and lines[1] == "help-ok", out
    assert lines[2].startswith(f"pg_dump (PostgreSQL) {images.BED_PG_MAJOR}.")
    assert lines[3].startswith(f"pg_restore (PostgreSQL) {images.BED_PG_MAJOR}.")
    assert lines[5:] == ["scan-ok", "/opt/venv/bin/python", "0"], out  # the build's CA mount left nothing
    # The runner, as the Jobs use it: the operator image installs it into a shared directory, another image runs it.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    run_in(ref, "alembic-operator", "job", "install-runner", f"/alembic-operator/{Path(jobs.RUNNER).name}",
           volumes=(f"{shared}:/alembic-operator",))
    runner = f"/alembic-operator/{Path(jobs.RUNNER).name}"
    assert "plan" in run_in(images.app_base(), "python", runner, "--help", volumes=(f"{shared}:/alembic-operator",))
    assert "plan" in run_in(ref, "python", runner, "--help", volumes=(f"{shared}:/alembic-operator",))
