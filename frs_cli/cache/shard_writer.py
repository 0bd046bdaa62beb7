"""Writing teacher-cache batches to the store: in this process, or in writer processes fed through shared memory.

zarr-python runs every store operation of a process on one event loop, and a shard's encoding holds the GIL,
so writer threads slow the thread that drives the GPU and add no write bandwidth. ``WriterProcesses`` moves
checksums and zarr writes into their own processes: the parent copies each batch into a shared-memory slot
and sends its layout through a queue; a worker writes it and hands the slot back. This module imports no
torch, so workers start in well under a second.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np
import zarr

from frs_cli.cache.checksum import view_crc
from frs_cli.errors import StorageError
from frs_cli.signals import leave_stop_to_parent

ALIGN = 64  # byte alignment of each array inside a slot
# zarr while writing: a shard's inner chunks encoded up to 64 at once (its default, 10, starves a writer); every
# chunk written as it is, not first compared with the fill value (a view is never all fill, and the comparison
# reads the whole batch once more)
WRITE_CONFIG = {"async.concurrency": 64, "array.write_empty_chunks": True}


def _runs(rows: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive runs in sorted ``rows``: (start row, stop row, index of the start in ``rows``)."""
    runs, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i] != rows[i - 1] + 1:
            runs.append((rows[start], rows[i - 1] + 1, start))
            start = i
    return runs


class OpenArrays:
    """The arrays of the zarr group ``root`` by path, each opened once: a writer writes batch after batch into
    the same arrays, and ``root[path]`` reads and parses the array's metadata every time."""

    def __init__(self, root: zarr.Group):
        self.root = root
        self._arrays: dict[str, zarr.Array] = {}

    def __getitem__(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            self._arrays[path] = self.root[path]
        return self._arrays[path]


def write_rows(root: zarr.Group | OpenArrays, bucket: str, rows: list[int], level_names, feats, scales,
               masks) -> None:
    """Views at consecutive ``rows`` of one bucket: every array, then checksums, then done flags (in that order).

    ``feats``/``masks``: per level ``(len(rows), ...)`` arrays in storage form; ``scales`` per level
    ``(len(rows), C)`` or None. One zarr call per array and run of rows (one shard for a whole batch).
    """
    crcs = np.zeros((len(rows), 2 * len(level_names)), dtype=np.uint32)
    for lv, (name, f, sc, m) in enumerate(zip(level_names, feats, scales, masks)):
        for start, stop, i in _runs(rows):
            root[f"buckets/{bucket}/{name}/features"][start:stop] = f[i : i + stop - start]
            if sc is not None:
                root[f"buckets/{bucket}/{name}/scale"][start:stop] = sc[i : i + stop - start]
            root[f"buckets/{bucket}/{name}/mask"][start:stop] = m[i : i + stop - start]
        for j in range(len(rows)):
            crcs[j, 2 * lv] = view_crc(f[j], None if sc is None else sc[j])
            crcs[j, 2 * lv + 1] = view_crc(m[j])
    for start, stop, i in _runs(rows):
        root[f"buckets/{bucket}/crc"][start:stop] = crcs[i : i + stop - start]
        root[f"buckets/{bucket}/done"][start:stop] = 1


def batch_dtypes(levels: int, stored, scaled: bool) -> list[np.dtype]:
    """The numpy dtype of each array of a batch, in the order the writer hands them over: per level the features
    (``stored``) and, when ``scaled``, their float32 scales; then the float16 masks of every level."""
    per_level = [np.dtype(stored), np.dtype(np.float32)] if scaled else [np.dtype(stored)]
    return per_level * levels + [np.dtype(np.float16)] * levels


def split_batch(arrays: list, levels: int, scaled: bool):
    """Arrays in ``batch_dtypes`` order -> (features, scales or None, masks) per level, as ``write_rows`` takes them."""
    per = 2 if scaled else 1
    feats = [arrays[per * lv] for lv in range(levels)]
    scales = [arrays[per * lv + 1] if scaled else None for lv in range(levels)]
    return feats, scales, arrays[per * levels :]


@dataclass(frozen=True)
class Layout:
    """Where one batch's arrays lie in a slot: per array ``(offset, shape, numpy dtype)``, in ``batch_dtypes``
    order (``scaled``: whether each level has scales)."""

    arrays: tuple[tuple[int, tuple[int, ...], str], ...]
    scaled: bool

    @staticmethod
    def of(shapes_dtypes, scaled: bool) -> Layout:
        arrays, offset = [], 0
        for shape, dtype in shapes_dtypes:
            arrays.append((offset, tuple(int(s) for s in shape), np.dtype(dtype).str))
            offset += -(-int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize // ALIGN) * ALIGN
        return Layout(tuple(arrays), scaled)

    @property
    def nbytes(self) -> int:
        offset, shape, dtype = self.arrays[-1]
        return offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    def views(self, buffer) -> list[np.ndarray]:
        return [np.ndarray(shape, dtype=np.dtype(dtype), buffer=buffer, offset=offset)
                for offset, shape, dtype in self.arrays]



def _serve(path: str, storage_options: dict | None, tasks, results) -> None:
    """A writer process: write each batch the parent sends, report its slot back; exit with the parent.

    Ctrl-C reaches every process of the terminal's group, a scheduler's SIGTERM every process of the job: the
    parent stops the job (and these processes, through ``close``) and says so in one line; a writer ignores both
    rather than print its own traceback or die under the parent's feet (the parent's own SIGTERM ends it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    leave_stop_to_parent()  # a scheduler's SIGTERM to the whole job is the parent's to handle; the parent's own ends it
    _die_with_parent()
    parent = mp.parent_process()
    root = None  # opened at the first batch: the parent may still be creating the cache
    slots: dict[str, shared_memory.SharedMemory] = {}
    with zarr.config.set(WRITE_CONFIG):
        while True:
            try:
                task = tasks.get(timeout=0.5)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    break
                continue
            if task is None:
                break
            slot, name, bucket, rows, level_names, layout = task
            try:
                if root is None:
                    root = OpenArrays(zarr.open_group(path, mode="r+", storage_options=storage_options))
                if name not in slots:
                    slots[name] = shared_memory.SharedMemory(name=name)
                arrays = layout.views(slots[name].buf)
                write_rows(root, bucket, rows, level_names, *split_batch(arrays, len(level_names), layout.scaled))
                del arrays
                results.put((slot, None))
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent as one line
                results.put((slot, (getattr(exc, "errno", None), f"{type(exc).__name__}: {exc}")))
    for shm in slots.values():
        shm.close()


def _worker(path: str, storage_options: dict | None, tasks, results) -> None:
    """A writer process's target: ``_serve``, then its exit without the interpreter's teardown.

    Once the results queue has handed every slot back to the parent's pipe there is nothing left to finish (each
    batch was written and its files closed before its slot went back), and tearing down zarr, numpy and their
    threads only delays the parent's ``close``: 0.07-0.16 s a worker after its last atexit handler on an H100
    machine, 0.006-0.011 s with ``os._exit`` (docs/results/issue13_2026-12-07_h100_s42/call1)."""
    _serve(path, storage_options, tasks, results)
    results.close()
    results.join_thread()  # the queue's feeder thread has written every result to the pipe
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in this process inside the block (on the main thread; elsewhere nothing changes): a
    process started inside it starts with Ctrl-C ignored, so its interpreter's start prints no traceback either."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process when its parent dies (a killed teacher-cache leaves no writer
    behind to race the resumed run); elsewhere the serve loop notices the parent is gone within half a second."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class WriterProcesses:
    """``processes`` writer processes for the cache at ``path``, fed through shared-memory slots.

    Start them early (they import zarr while the teacher loads), then ``allocate`` the slots. ``slot`` waits
    while every slot is in use (backpressure). A failed write in a worker is raised in the parent by the next
    ``slot`` or by ``close``: an ``OSError`` with the worker's errno (a full disk), else ``StorageError``.
    """

    def __init__(self, path: str, storage_options: dict | None, processes: int):
        ctx = mp.get_context("spawn")  # the parent holds CUDA, zarr's event loop and threads: do not fork it
        self._shm: list[shared_memory.SharedMemory] = []
        self._free: list[int] = []
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._procs = [ctx.Process(target=_worker, args=(path, storage_options, self._tasks, self._results),
                                   daemon=True, name=f"frs-cache-writer-{i}") for i in range(processes)]
        try:
            with _sigint_ignored():  # inherited through the new interpreter's start, before _serve sets it too
                for p in self._procs:
                    p.start()
        except OSError as exc:  # e.g. the interpreter cannot be run by this user: the child dies, its pipe breaks
            for p in self._procs:
                if p.pid is not None:
                    p.terminate()
            raise StorageError(f"cache writer processes: {processes} could not start ({exc})",
                               hint="set cache.write_processes = 0 to write from this process") from exc
        self._error = None
        self._closed = False
        self._views: list = []  # per slot a uint8 tensor over it (``pin``)
        self._registered: list[int] = []  # the slots registered with CUDA, in the order they were
        self._refused: set[int] = set()  # the slots CUDA refused to register
        self.seconds: dict[str, float] = {}  # where ``close`` spent its time

    def __len__(self) -> int:
        return len(self._procs)

    def allocate(self, slot_bytes: int, slots: int) -> None:
        """``slots`` shared-memory slots of ``slot_bytes`` each (a batch's ``Layout.nbytes`` at most)."""
        self._shm = [shared_memory.SharedMemory(create=True, size=max(slot_bytes, 1)) for _ in range(slots)]
        self._free = list(range(slots))

    def pin(self) -> bool:
        """Register the slots with CUDA as page-locked memory, so the device copies each batch straight into its
        slot (``pinned``) instead of through a pinned buffer and a host copy. The slot taken first is registered
        here (False, with the slots left as they are, where CUDA refuses), each other one as it is first taken: a
        registration touches and locks every page of its slot (about 0.4 s for the 16 slots of an R50-FPN int8
        write), which then runs beside the teacher's first batches on the device instead of before them."""
        import torch

        self._views = [torch.frombuffer(shm.buf, dtype=torch.uint8) for shm in self._shm]
        if not self._register(self._free[-1]):  # the slot ``slot`` hands out first
            self._views = []
            return False
        return True

    def _register(self, slot: int) -> bool:
        """Register slot ``slot`` with CUDA; False where CUDA refuses."""
        import torch

        cudart = torch.cuda.cudart()
        t = self._views[slot]
        if cudart.cudaHostRegister(t.data_ptr(), t.numel(), 0) != cudart.cudaError.success:
            # the refusal stays CUDA's "last error" and would fail the next kernel launch: let one fail here
            with contextlib.suppress(RuntimeError):
                torch.ones(1, device="cuda").add_(1)
            return False
        self._registered.append(slot)
        return True

    def pinned(self, slot: int):
        """Slot ``slot`` as a uint8 tensor (after ``pin``), registered with CUDA on first use. One CUDA refuses
        then (page-locked memory ran out) stays as it is: the device copies into it through a staging buffer,
        slower, the bytes the same."""
        if slot not in self._registered and slot not in self._refused and not self._register(slot):
            self._refused.add(slot)
        return self._views[slot]

    def _unpin(self) -> None:
        if self._registered:
            import torch

            torch.cuda.synchronize()  # no copy into a slot is still under way (after an error)
            self._unregister(self._registered)
        self._registered, self._refused = [], set()
        self._views = []  # the tensors let go of the buffers, which can then be closed

    def _unregister(self, slots) -> None:
        """Unregister ``slots`` (registered ones, no copy into them under way) with CUDA."""
        import torch

        for slot in list(slots):
            torch.cuda.cudart().cudaHostUnregister(self._views[slot].data_ptr())
            self._registered.remove(slot)

    def slot(self) -> tuple[int, memoryview]:
        """A free slot (index and buffer), waiting for a worker to hand one back if none is free."""
        while not self._free:
            self._collect()
        self._raise()
        i = self._free.pop()
        return i, self._shm[i].buf

    def put(self, slot: int, bucket: str, rows: list[int], level_names, layout: Layout) -> None:
        self._tasks.put((slot, self._shm[slot].name, bucket, rows, list(level_names), layout))

    def _collect(self) -> None:
        """Wait for one worker to hand a slot back."""
        while True:
            try:
                slot, error = self._results.get(timeout=1.0)
            except queue.Empty:
                # a worker that took its stop (``close``) exits with 0 while the others finish their batches
                dead = [p for p in self._procs if not p.is_alive() and p.exitcode != 0]
                if dead or not any(p.is_alive() for p in self._procs):
                    p = (dead or self._procs)[0]
                    raise StorageError(f"teacher-cache: writer process {p.name} exited (code "
                                       f"{p.exitcode}) with batches in flight",
                                       hint="run the same command with --resume") from None
                continue
            self._free.append(slot)
            if error is not None and self._error is None:
                self._error = error
            return

    def _raise(self) -> None:
        if self._error is not None:
            code, message = self._error
            if code is not None:
                raise OSError(code, message)
            raise StorageError(f"teacher-cache: a writer process failed: {message}",
                               hint="run the same command with --resume")

    def close(self, wait: bool = True) -> None:
        """Wait for every batch in flight (``wait``), stop the workers, free the slots; then raise a worker's
        error, if one failed. A second call does nothing. After every batch is handed over (no copy into a slot
        under way): each worker is told to stop behind the batches queued, and each slot a worker hands back is
        unregistered with CUDA while the others still write, so only the last write's and the exits' time is left
        (``seconds``: ``wait``, ``join`` and ``free``)."""
        if self._closed:
            return
        self._closed = True
        t0 = time.perf_counter()
        try:
            for _ in self._procs:  # queued behind every batch: a worker stops once none is left for it
                self._tasks.put(None)
            if wait:
                self._unregister([s for s in self._free if s in self._registered])
                while len(self._free) < len(self._shm):
                    self._collect()
                    if self._free[-1] in self._registered:  # the device's copy into it was done before hand-over
                        self._unregister([self._free[-1]])
        finally:
            t1 = time.perf_counter()
            for p in self._procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.terminate()
            t2 = time.perf_counter()
            self._unpin()
            for shm in self._shm:
                shm.close()
                shm.unlink()
            self.seconds = {"wait": t1 - t0, "join": t2 - t1, "free": time.perf_counter() - t2}
        if wait:
            self._raise()
