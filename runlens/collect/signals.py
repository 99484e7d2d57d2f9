"""SIGTERM and SIGINT while a Monitor runs: record the signal, flush, then let it do what it would have done.

Nothing recorded is lost on a signal, and the process still dies as it would have without runlens: with the
default action the run is closed as failed and the signal re-raised; a Python handler (SIGINT's
KeyboardInterrupt, a user's checkpoint-on-SIGTERM) runs after the flush and decides; an ignored signal stays
ignored. Handlers can only be installed on the main thread; off it, the ``atexit`` hook still closes the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from runlens.collect.lifecycle import STATE_CLOSING, STATE_RUNNING

if TYPE_CHECKING:
    from runlens.collect.monitor import Monitor

HANDLED_SIGNALS = ("SIGTERM", "SIGINT")


class SignalHandling:
    """The Monitor's signal handlers (a mixin of ``Monitor``; its state is the Monitor's)."""

    def _install_signal_handlers(self: Monitor) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python only allows handlers on the main thread; the atexit hook still closes the run
        for name in HANDLED_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                previous = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)
            except (ValueError, OSError, TypeError):
                continue
            self._prev_handlers[int(signum)] = previous

    def _uninstall_signal_handlers(self: Monitor) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._prev_handlers.items():
            with contextlib.suppress(Exception):
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._prev_handlers.clear()

    def _on_signal(self: Monitor, signum: int, frame: FrameType | None) -> None:
        """Record the signal, flush, then do what the previous handler would have done.

        Default action (SIGTERM): the run is marked failed with the signal as its reason and closed, then the
        default handler is restored and the signal re-raised, so the process dies by the signal (exit -15 /
        143) exactly as it would have without runlens. A Python handler (SIGINT's KeyboardInterrupt, a user's
        checkpoint-on-SIGTERM) is called after the flush and decides; an ignored signal stays ignored.
        """
        previous = self._prev_handlers.get(signum, signal.SIG_DFL)
        if os.getpid() != self._pid:  # a forked child (DataLoader worker) inherited the handler
            self._reraise(signum, frame, previous)
            return
        if self._state == STATE_CLOSING:  # interrupted our own close: let it finish, then act
            self._deferred_signals.append(signum)
            return
        if self._state == STATE_RUNNING:
            name = signal.Signals(signum).name
            dies = previous in (signal.SIG_DFL, None)
            ignored = previous == signal.SIG_IGN
            try:
                action = "default" if dies else "ignored" if ignored else "handler"
                self._record_event("signal", {"signal": name, "signum": int(signum), "action": action})
                if not ignored:
                    self._signal_reason = name
                if dies:
                    self._finish("failed", name, exit_signal=int(signum))
                elif not ignored:
                    self._wait_for_event_samples(1.0)
                    self._writer.flush(timeout=5.0)
            except Exception:
                pass
        self._reraise(signum, frame, previous)

    def _reraise(self: Monitor, signum: int, frame: FrameType | None, previous: Any) -> None:
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        with contextlib.suppress(Exception):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
