"""Stop signals: the commands' own handling of them (``sigint_handled``), and in helper processes (a DataLoader
worker, a cache writer) leaving one from the outside to the parent, which stops the job cleanly. No torch: the
cache's writer processes and ``data synth`` import it."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

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
