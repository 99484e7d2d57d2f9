"""The errors runlens raises on purpose.

Every error a user can cause (a wrong job id, a broken database, a bad config) is one of these; the CLI
turns them into one line on stderr and an exit code, and anything else is a bug.

    RunlensError                      base; exit code 1 at the CLI unless it says otherwise
    ├── StoreUnavailable(url, reason)  the store cannot be opened or written        (exit 2)
    ├── SchemaTooNew(found, known)     the database was written by a newer runlens  (exit 2)
    ├── JobNotFound(job_id)            no such job in this store                    (exit 2)
    ├── ConfigError(path, reason)      a config file that cannot be read or parsed  (exit 2)
    ├── LogUnreadable(path, reason)    a log file that cannot be read               (exit 2)
    ├── LogNotWritable(path, reason)   the job's log file cannot be created         (exit 2)
    ├── CommandNotStarted(command, reason, exit_code)
    │                                  ``runlens collect``'s command cannot start   (exit 127 or 126)
    ├── BadParameter(name, reason)     a request or option value that makes no sense (exit 2; HTTP 400)
    └── BrokenInstall(what)            a file runlens ships is missing              (exit 1)
"""

from __future__ import annotations


class RunlensError(Exception):
    """Base class for errors runlens reports to the user as a one-line message."""

    exit_code: int = 1


class StoreUnavailable(RunlensError):
    """The store at ``url`` cannot be opened (missing, corrupt, a directory, unreachable)."""

    exit_code = 2

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot open the runlens store {url}: {reason}")


class SchemaTooNew(RunlensError):
    """The database schema is newer than this runlens knows; writing to it could corrupt it."""

    exit_code = 2

    def __init__(self, found: str, known: str, url: str = "") -> None:
        self.found = found
        self.known = known
        self.url = url
        where = f" {url}" if url else ""
        super().__init__(
            f"the store{where} was written by a newer runlens (schema {found}, this runlens knows up to "
            f"{known}); upgrade runlens with 'pip install -U runlens'"
        )


class JobNotFound(RunlensError):
    """No job with this id is in the store."""

    exit_code = 2

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r} in this store; 'runlens jobs' lists the known ones")


class ConfigError(RunlensError):
    """A config file or setting that cannot be read, parsed or understood."""

    exit_code = 2

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot read config {path}: {reason}")


class LogUnreadable(RunlensError):
    """A log file that cannot be opened or read."""

    exit_code = 2

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot read log file {path}: {reason}")


class LogNotWritable(RunlensError):
    """The job's log file cannot be created."""

    exit_code = 2

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot write the log file {path}: {reason}")


class CommandNotStarted(RunlensError):
    """The command could not be started: not found (exit 127) or not executable (exit 126), as a shell says."""

    def __init__(self, command: str, reason: str, exit_code: int) -> None:
        self.command = command
        self.reason = reason
        self.exit_code = exit_code
        super().__init__(f"cannot run {command!r}: {reason}")


class BadParameter(RunlensError):
    """A parameter (of a ``runlens ui`` request, say) whose value cannot be used: not a number, out of range,
    not one of the allowed words."""

    exit_code = 2

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"bad parameter {name!r}: {reason}")


class BrokenInstall(RunlensError):
    """A folder that runlens ships (its migrations, its templates) is missing: the install is incomplete."""

    def __init__(self, what: str, where: str) -> None:
        self.what = what
        self.where = where
        super().__init__(f"this runlens install has no {what} folder (looked beside {where}); "
                         "reinstall with 'pip install --force-reinstall runlens'")
