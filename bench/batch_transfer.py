"""What a batch from a DataLoader worker costs the process that trains, by its size: CPU only, in seconds.

A worker hands each batch over as one shared-memory buffer (``frs_cli.data.packed``). The training process
maps it, reads it (the DataLoader's pin-memory thread copies every byte into page-locked memory) and, once the
batch is dropped, unmaps it; the kernel then frees its pages. On one H200 a cached step was 1.05-1.14x the plain
one and the plain step fed the cached batches (targets unused) was already slower than the plain one, more so
for the larger encodings (docs/BENCHMARKS.md, session 14): this script measures that hand-over alone, for
batches of the sizes each encoding gives.

Per kind of batch (its megabytes: ``--views`` x (``--image-mb`` + the encoding's MB per view)), after the
queue has filled, with ``--step-ms`` of sleep between batches so the workers stay ahead (as a training step
keeps them): the training thread's milliseconds to receive a batch (``next``), to read a byte of each page
(what pinning does, without a GPU), and to drop it, and the process's user and system CPU milliseconds and
minor page faults per batch. Kinds are measured ``--rounds`` times, in turn; with ``--holds 0,2,6`` each also
with its workers holding none, two and six of their last buffers (``frs_cli.data.packed.WORKER_HOLD``), so that
dropping a batch in the training process frees its pages there or leaves that to the worker.

    python3 bench/batch_transfer.py --out docs/results/batch_transfer_$(date +%F).json --holds 0,2,6

The default MB per view are the X101 caches' (``mb_per_view`` in docs/results/issue13_2026-12-03_h200_s14/call1/
step/step.json: int5 1.097, int8 1.743, float16 3.463), and 1.31 MB is one 853 x 512 uint8 RGB view.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_name

KINDS = "plain:0,int5:1.097,int8:1.743,float16:3.463"


class Batches(torch.utils.data.Dataset):
    """Endless batches of ``nbytes``, each a new packed buffer with every page written, as a worker's collate
    leaves it."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int):
        from frs_cli.data.packed import PackedTensors

        packed = PackedTensors.allocate([(torch.uint8, (self.nbytes,))])
        packed.views[0].fill_(index % 251)
        return packed


def measure(nbytes: int, workers: int, batches: int, step_s: float, hold: int | None = None) -> dict:
    """The training thread's and the process's cost per batch of ``nbytes`` through a DataLoader whose workers
    hold their last ``hold`` buffers (None: as the package does)."""
    import functools

    from frs_cli.data.packed import hold_in_worker

    init = None if hold is None or not workers else functools.partial(hold_in_worker, hold)
    loader = torch.utils.data.DataLoader(Batches(nbytes), batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None, worker_init_fn=init)
    it = iter(loader)
    next(it)
    time.sleep(max(1.0, 4 * workers * step_s))  # the queue fills
    page = os.sysconf("SC_PAGE_SIZE")
    parts = {"receive": 0.0, "read": 0.0, "drop": 0.0}
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(batches):
        time.sleep(step_s)
        t0 = time.perf_counter()
        packed = next(it)
        t1 = time.perf_counter()
        packed.buffer[::page].sum()  # one byte of every page
        t2 = time.perf_counter()
        del packed
        t3 = time.perf_counter()
        parts["receive"] += t1 - t0
        parts["read"] += t2 - t1
        parts["drop"] += t3 - t2
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    del it, loader
    out = {f"{k}_ms": 1e3 * v / batches for k, v in parts.items()}
    out["thread_ms"] = sum(out[f"{k}_ms"] for k in parts)
    out["user_ms"] = 1e3 * (r1.ru_utime - r0.ru_utime) / batches
    out["sys_ms"] = 1e3 * (r1.ru_stime - r0.ru_stime) / batches
    out["minor_faults"] = (r1.ru_minflt - r0.ru_minflt) / batches
    return out


def parse_kinds(text: str) -> dict[str, float]:
    kinds = {}
    for item in text.split(","):
        name, _, mb = item.partition(":")
        try:
            kinds[name] = float(mb)
        except ValueError:
            raise SystemExit(f"batch_transfer: expected --kinds as name:MB per view, got {item!r}") from None
    return kinds


def run(args, argv: list[str]) -> dict:
    kinds = parse_kinds(args.kinds)
    res = {"command": "python3 bench/batch_transfer.py " + " ".join(argv), "device": cpu_name(),
           "cpu_cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "args": {k: str(v) for k, v in vars(args).items()}, "rounds": []}
    holds = [int(h) for h in args.holds.split(",")] if args.holds else [None]
    settings = [(name, hold) for name in kinds for hold in holds]
    for r in range(args.rounds):
        row = {}
        for name, hold in settings if r % 2 == 0 else settings[::-1]:
            mb = args.views * (args.image_mb + kinds[name])
            key = name if hold is None else f"{name} hold {hold}"
            row[key] = {"mb": mb, "worker_hold": hold,
                        **measure(int(mb * 2**20), args.workers, args.batches, args.step_ms / 1e3, hold)}
            print(f"round {r} {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in row[key].items() if v is not None),
                  flush=True)
        res["rounds"].append(row)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return res


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    p.add_argument("--kinds", default=KINDS, help="name:MB per view of the cached targets (0: images alone)")
    p.add_argument("--views", type=int, default=8, help="views per batch")
    p.add_argument("--image-mb", type=float, default=1.31, help="MB of one view's image")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--step-ms", type=float, default=40.0, help="sleep between batches (the training step)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--holds", default="", help="comma list of buffers each worker holds (packed.WORKER_HOLD), each "
                   "measured in turn for every kind (empty: the package's)")
    return p.parse_args(argv)


def main() -> None:
    run(parse_args(), sys.argv[1:])


if __name__ == "__main__":
    main()
