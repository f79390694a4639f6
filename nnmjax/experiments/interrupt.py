"""Interrupting a long command safely: SIGINT and SIGTERM become a request to stop.

A signal that raises ``KeyboardInterrupt`` inside an XLA call or during tracing leaves
JAX's threads mid-flight; the traceback runs to hundreds of lines and the interpreter's
teardown can crash (exit -11). Under :func:`stop_on_signals` a first SIGINT or SIGTERM only
sets :attr:`StopRequest.signal`; the command checks :meth:`StopRequest.check` at its safe
points (:func:`nnmjax.experiments.grid.run_grid`: before and after every chunk), saves what it has and
leaves. A second signal ends the process at once (:func:`os._exit`, no teardown) with the
conventional status ``128 + signum`` (130 for SIGINT, 143 for SIGTERM) and one line on
stderr. The signals are read from a wake-up pipe by a watcher thread, so the second one
acts even while the main thread is inside a long compilation.

Example::

    with stop_on_signals("nnmjax run") as stop:
        for chunk in work:
            stop.check()          # raises Stopped once a signal has arrived
            chunk()
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

__all__ = ["Stopped", "StopRequest", "stop_on_signals", "exit_status", "quit_on_signals",
           "KEPT_NOTE"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


#: What the one line of :func:`quit_on_signals` says was kept (commands may set it).
KEPT_NOTE = ["files it finished writing are kept"]


def quit_on_signals(prog: str) -> None:
    """Outside :func:`stop_on_signals`, make SIGINT and SIGTERM end the process at once with
    one line (``"<prog>: stopped by SIGINT; <KEPT_NOTE>"``) and ``128 + signum``, without
    the interpreter's teardown, killing any ``multiprocessing`` children first. Every file
    nnmjax writes is written atomically, so nothing half-written is left behind; the
    ``nnmjax`` command calls this before anything else."""
    def handler(signum, frame):
        print(f"\n{prog}: stopped by {signal.Signals(signum).name}; {KEPT_NOTE[0]}",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        if "multiprocessing" in sys.modules:  # worker processes (nnmjax audit --jobs) go too
            for child in sys.modules["multiprocessing"].active_children():
                child.kill()
        os._exit(exit_status(signum))

    for s in _SIGNALS:
        signal.signal(s, handler)


class Stopped(Exception):
    """Raised at a safe point after a stop was requested; ``signum`` is the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int) -> int:
    """The shell's status for a process ended by ``signum``: ``128 + signum``."""
    return 128 + int(signum)


class StopRequest:
    """The signal received so far (``None``: none); :meth:`check` raises :class:`Stopped`."""

    def __init__(self):
        self.signal: int | None = None
        #: Called (in order) just before a second signal ends the process, e.g. to stop
        #: worker processes.
        self.on_exit: list = []

    def __bool__(self) -> bool:
        return self.signal is not None

    def check(self) -> None:
        if self.signal is not None:
            raise Stopped(self.signal)


@contextlib.contextmanager
def stop_on_signals(prog: str, *, note: str = "stopping at the next safe point"):
    """Within the block, SIGINT and SIGTERM set the yielded :class:`StopRequest` (printing
    ``"<prog>: <SIGNAL>: <note>; press Ctrl-C again to quit at once"``); a second signal
    exits the process at once with :func:`exit_status`. Outside the main thread, or where
    signals cannot be caught, it yields a request that never fires."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for s in _SIGNALS:  # a Python handler that does nothing: C's handler writes the pipe
        signal.signal(s, lambda *_: None)

    def watch():
        while True:
            try:
                data = os.read(read_fd, 16)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum not in _SIGNALS:
                    continue
                if stop.signal is None:
                    stop.signal = signum
                    print(f"\n{prog}: {signal.Signals(signum).name}: {note}; press Ctrl-C "
                          f"again to quit at once", file=sys.stderr, flush=True)
                else:
                    print(f"{prog}: {signal.Signals(signum).name} again: quitting now; finished "
                          f"work is kept on disk", file=sys.stderr, flush=True)
                    for hook in stop.on_exit:
                        hook()
                    os._exit(exit_status(signum))

    watcher = threading.Thread(target=watch, name="nnmjax-signals", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, h in previous.items():
            signal.signal(s, h)
        os.close(write_fd)  # ends the watcher's read
        watcher.join(timeout=1)
        os.close(read_fd)
