"""The runner: what the operator's Jobs run in the app's image, with the app's Python, Alembic and SQLAlchemy.

A package of standard-library + alembic + sqlalchemy modules (relative imports only, Python 3.9+), shipped to the
Job as ONE file: `build.build()` packs it into a zipapp (``runner.pyz``) that ``alembic-operator job install-runner``
writes into the Job's shared volume; the app's container runs ``python /alembic-operator/runner.pyz <command>``
(cli.py documents the commands and their results). The operator imports `redact`, `results`, `lock` and `driver`
from here too, so the runner, the operator's Jobs and ``check`` share one redactor, one result writer, one lock key
and one env.py driver.
"""
