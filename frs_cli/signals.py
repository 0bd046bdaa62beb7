"""Signals in helper processes: a DataLoader worker or a cache writer leaves a stop signal from the outside to its
parent, which stops the job cleanly. Standard library only: the cache's writer processes import it at start."""

from __future__ import annotations

import os
import signal
import threading


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
