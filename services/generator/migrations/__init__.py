"""The Generator's Alembic migrations (version table `alembic_version_generator`): the gallery.

Run by services.generator.gallery through shared.metadata_store.migrate() at every start (one
transaction under a lock, so replicas may start together). A new revision goes in versions/,
append only (never edit a released one); to start one from script.py.mako, point Alembic at
this folder, e.g. an ini file with `[alembic]` / `script_location = services/generator/migrations`
and `alembic -c that.ini revision -m "add x" --rev-id 0002`. SQLite runs in batch mode, so a
revision alters a table with `with op.batch_alter_table("images") as b: ...` (works on both).
"""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent
