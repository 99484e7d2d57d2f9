"""runlens's public surface is small and deliberate: a sorted ``__all__`` of names that all resolve."""

from __future__ import annotations

import runlens

EXPECTED = {"ConfigError", "JobNotFound", "LogUnreadable", "Monitor", "RunlensError", "SchemaTooNew",
            "StoreUnavailable", "__version__"}


def test_all_is_sorted_and_exactly_the_public_names() -> None:
    assert runlens.__all__ == sorted(runlens.__all__)
    assert set(runlens.__all__) == EXPECTED


def test_every_exported_name_resolves() -> None:
    for name in runlens.__all__:
        assert getattr(runlens, name) is not None, name
    from runlens.collect.monitor import Monitor

    assert runlens.Monitor is Monitor
    assert all(issubclass(getattr(runlens, n), runlens.RunlensError) for n in EXPECTED if n[0].isupper()
               and n != "Monitor")


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        runlens.Monitr  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "Monitr" in str(exc)
    else:
        raise AssertionError("runlens.Monitr should not exist")
