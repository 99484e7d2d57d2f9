"""Alembic environment for runlens; driven from code (runlens.store.migrate), never from alembic.ini."""

from alembic import context

from runlens.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - runlens always passes its open connection
    raise RuntimeError("runlens migrations run through runlens.store.migrate, which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite can only ALTER through table copies
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
