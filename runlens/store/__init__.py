"""The runlens store: models, engine, migrations, and the Store API. The only package that issues SQL."""

from runlens.store.store import JOB_STATUSES, Store, new_job_id, open_store

__all__ = ["JOB_STATUSES", "Store", "new_job_id", "open_store"]
