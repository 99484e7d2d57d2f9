"""Warnings a user must see, through ``logging``, even in a program that never configured it.

The Monitor runs inside someone else's training script: when the store cannot be opened, or the monitoring
budget is passed, that script's author has to read it on stderr. Library code must not print, and Python's own
``logging.lastResort`` covers only a process with no handler at all (any framework that logs to a file, or a
test runner capturing records, silences it). So the loggers of those warnings get ``StderrFallback``: it writes
``runlens: <message>`` to stderr unless a handler the application installed already shows the record on the
terminal, so the message is printed once, by the application's handler when there is one.
"""

from __future__ import annotations

import contextlib
import logging
import sys

PREFIX = "runlens: "


class StderrFallback(logging.Handler):
    """WARNING and above to ``sys.stderr`` (looked up when the record arrives), prefixed ``runlens: ``, unless
    another handler on the way to the root logger already writes the record to the terminal."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)

    def emit(self, record: logging.LogRecord) -> None:
        if _shown_elsewhere(record, self):
            return
        with contextlib.suppress(Exception):   # a closed or broken stderr must not reach the training loop
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            if not message.startswith("runlens"):
                message = PREFIX + message
            stream = sys.stderr
            stream.write(message + "\n")
            stream.flush()


def _terminal_streams() -> tuple[object, ...]:
    return sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__


def _shown_elsewhere(record: logging.LogRecord, me: logging.Handler) -> bool:
    """True when a handler other than ``me``, between the record's logger and the root, writes it to the
    terminal (``logging.basicConfig()``, the runlens CLI, an application's console handler)."""
    terminals = _terminal_streams()
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        for handler in logger.handlers:
            if handler is me or record.levelno < handler.level:
                continue
            if isinstance(handler, logging.StreamHandler) and handler.stream in terminals:
                return True
        if not logger.propagate:
            break
        logger = logger.parent
    return False


def warn_on_stderr(logger: logging.Logger) -> logging.Logger:
    """Give ``logger`` the stderr fallback (once) and return it:
    ``log = warn_on_stderr(logging.getLogger(__name__))``."""
    if not any(isinstance(h, StderrFallback) for h in logger.handlers):
        logger.addHandler(StderrFallback())
    return logger
