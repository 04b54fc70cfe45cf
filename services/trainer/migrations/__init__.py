"""The Trainer's Alembic migrations (version table `alembic_version_trainer`).

Run by services.trainer.store through shared.metadata_store.migrate() at every start (one
transaction under a lock, so replicas may start together). A new revision goes in versions/,
append only (never edit a released one); to start one from script.py.mako, point Alembic at
this folder, e.g. an ini file with `[alembic]` / `script_location = services/trainer/migrations`
and `alembic -c that.ini revision -m "add x" --rev-id 0003`. SQLite runs in batch mode, so a
revision alters a table with `with op.batch_alter_table("jobs") as b: ...` (works on both).
"""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent
