"""runlens: a flight recorder and post-mortem analyst for training runs.

    import runlens
    with runlens.Monitor(name="my-run", config="config.yaml") as mon:
        for step, batch in enumerate(mon.loader(loader)):
            ...
            mon.step(step, loss=loss, lr=lr)
"""

from runlens._version import __version__
from runlens.core.errors import ConfigError, JobNotFound, LogUnreadable, RunlensError, SchemaTooNew, StoreUnavailable

__all__ = [
    "ConfigError",
    "JobNotFound",
    "LogUnreadable",
    "Monitor",
    "RunlensError",
    "SchemaTooNew",
    "StoreUnavailable",
    "__version__",
]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # Monitor pulls in the collectors (psutil, threads); import it on first use so `import runlens`
    # and the CLI stay fast.
    if name == "Monitor":
        from runlens.collect.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'runlens' has no attribute {name!r}")
