"""Fixtures of the ui tests: ``ui_jobs``, a store of real jobs per test module, and ``start_ui``, which starts
``python -m runlens ui`` as a real server process on a free port and waits until it listens (helpers in
``ui_helpers``)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from ui_helpers import StartUi, UiJobs, UiServers, make_ui_jobs  # type: ignore[import-not-found]


@pytest.fixture(scope="module")
def ui_jobs(tmp_path_factory: pytest.TempPathFactory) -> UiJobs:
    folder = tmp_path_factory.mktemp("ui-jobs")
    return make_ui_jobs(folder, f"sqlite:///{folder / 'runlens.db'}")


@pytest.fixture
def start_ui(wait_until: Callable[..., Any]) -> Iterator[StartUi]:
    """``start_ui(db, *extra_args, host="127.0.0.1", connect="127.0.0.1")``: a running ``runlens ui``."""
    servers = UiServers(wait_until)
    try:
        yield servers.start
    finally:
        servers.close()
