"""`alembic-operator check`: the checks a CI pipeline runs against an Alembic project (see docs/check.md).

    from alembic_operator.check.cli import main
    main(["-c", "alembic.ini", "--scratch-url", "postgresql+psycopg://ci:...@db/postgres", "--format", "json"])
"""
