"""The runlens store: models, engine, migrations, and the Store API. The only package that issues SQL or knows
tables, columns and database URLs."""

from runlens.store.engine import absolute_db_url, sqlite_path
from runlens.store.store import JOB_STATUSES, Store, new_job_id, open_store

__all__ = ["JOB_STATUSES", "Store", "absolute_db_url", "new_job_id", "open_store", "sqlite_path"]
