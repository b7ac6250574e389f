"""The shop demo application (only its database models matter for alembic-operator)."""
