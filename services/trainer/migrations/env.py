"""Alembic environment of the Trainer: everything is in shared.metadata_store."""

from alembic import context

from boothstudio.shared.metadata_store import run_migrations_in_env

run_migrations_in_env(context)
