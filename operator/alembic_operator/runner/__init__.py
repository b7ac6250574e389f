"""The self-contained runner that the operator's Jobs run in the app's image (see alembic_runner.py)."""
