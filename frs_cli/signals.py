"""Stop signals: the commands' own handling of them (``sigint_handled``), and in helper processes (a DataLoader
worker, a cache writer) leaving one from the outside to the parent, which stops the job cleanly. No torch: the
cache's writer processes and ``data synth`` import it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

from frs_cli import errors


def leave_stop_to_parent(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn`` (also the cache writer processes'): SIGTERM from anyone but the parent
    process is ignored here. A scheduler's cancel sends it to every process of the job, and a worker it ended would
    make the training process fail ("worker exited unexpectedly") instead of saving its state at the step boundary;
    the worker ends with the training process either way. SIGTERM from the parent (multiprocessing's
    ``terminate``, at shutdown and at interpreter exit) still ends it: ignored, the parent would wait for it for
    ever. The signal is blocked in this thread (and the threads it starts) and read by a thread of its own, which
    sees who sent it. Where that cannot be done (no ``sigwaitinfo``, not the main thread), nothing changes."""
    if not hasattr(signal, "sigwaitinfo") or threading.current_thread() is not threading.main_thread():
        return
    parent = os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what the parent's SIGTERM then does (set here: main thread only)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def watch() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent or os.getppid() != parent:  # the parent's, or the parent is gone: end
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # this thread takes it: the default
                os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="frs-sigterm", daemon=True).start()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; kill, timeout, docker stop, a scheduler's cancel


@contextlib.contextmanager
def sigint_handled(handler):
    """Within the block the stop signals (SIGINT, SIGTERM) go to ``handler`` (in the main thread; elsewhere
    signals cannot be handled and nothing changes), whatever handled them before, even SIG_IGN; the signal is noted
    in ``errors.stop_signal`` (the command's exit status is 128 + it); the previous handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def noted(signum, frame):
        errors.stop_signal = signum
        return handler(signum, frame)

    previous = {s: signal.signal(s, noted) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def sigterm_spared_while(failing: Callable[[BaseException], bool]):
    """Within the block SIGTERM keeps its default action (the process ends at once), but while the process is
    handling an exception ``failing`` accepts (or one raised in the course of handling it): that failure goes on to
    be reported and the signal is let go. Under torchrun a worker's collective fails when another worker dies, and
    torchrun's agent, seeing the dead one, sends SIGTERM to the others: it may land as the survivor leaves the
    training loop (whose handler ``sigint_handled`` then gave SIGTERM back its default) or the process group,
    before the survivor said why it stops. Within ``sigint_handled`` its handler decides. The default action is
    taken when the main thread next runs Python (a handler's). Nothing changes outside the main thread or where
    SIGTERM is not at its default."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def spared(signum, frame):
        exc = sys.exc_info()[1]
        while exc is not None:
            if failing(exc):
                return
            exc = exc.__context__
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # the default action, as without this handler

    signal.signal(signal.SIGTERM, spared)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def ignore_closed_pipes() -> None:
    """Make a write to a closed pipe or socket an error this process meets (EPIPE), as Python starts, not the end of
    it. frs's ``main`` lets SIGPIPE end a command that only prints (``frs models | head -1``) as it ends other tools;
    a job talks to other processes over sockets and pipes (the process group's transport and store, loader workers,
    writer processes), as a remote cache's reader talks to its server, and a peer that died or closed the
    connection must be a failure it reports or retries, not its own silent death by signal 13."""
    if hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
