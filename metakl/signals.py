"""SIGTERM and SIGHUP stop a command exactly as Ctrl-C does.

Python turns SIGINT into KeyboardInterrupt, so `with`/`finally` blocks run and child processes (a vLLM server, math
workers) are stopped. SIGTERM (`kill PID`, a service manager, a CI timeout) and SIGHUP (the terminal closed) would
instead end the process at once and leave its children running. `stop_on_signals()` makes both raise `Terminated`,
a KeyboardInterrupt, so every cleanup path written for Ctrl-C also covers them. The CLI entry points call it
(`metakl.errors.run_cli`).

A signal that is ignored when the command starts stays ignored (`nohup metakl serve ...` survives a hang-up), and a
handler someone else installed is left alone.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP once `stop_on_signals()` is installed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_terminated(signum: int, _frame) -> None:
    raise Terminated(signum)


def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> list[int]:
    """Make `signals` raise `Terminated` in the main thread; returns those it installed (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in signals:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_terminated)
            installed.append(sig)
    return installed
