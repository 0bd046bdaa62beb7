"""frs_cli.data.prefetch: batches handed to the step one ahead, in order, with the loader's wait counted."""

import time

import torch

from frs_cli.data.prefetch import DevicePrefetcher


class _Batch:
    def __init__(self, k: int):
        self.images = torch.full((2, 3), k)
        self.moved = 0

    def to(self, device, non_blocking: bool = False):
        self.moved += 1
        return self

    def tensors(self):
        return [self.images]


def _slow(batches, seconds: float):
    for b in batches:
        time.sleep(seconds)
        yield b


def test_the_prefetcher_hands_out_every_batch_once_in_order_moved_once_and_counts_the_loader_wait():
    batches = [_Batch(k) for k in range(5)]
    pf = DevicePrefetcher(_slow(batches, 0.02), "cpu")
    got = [next(pf) for _ in range(5)]
    assert [int(b.images[0, 0]) for b in got] == [0, 1, 2, 3, 4]
    assert [b.moved for b in batches] == [1] * 5
    assert 0.1 <= pf.data_seconds < 1.0  # five waits of 20 ms for the loader
    assert next(pf, None) is None and next(pf, None) is None  # the end, and it stays there


def test_the_prefetcher_fetches_the_next_batch_when_it_hands_one_out():
    """One ahead: handing out batch n has already taken batch n+1 from the loader (whose copy then overlaps step
    n), and not more."""
    taken = []

    def loader():
        for k in range(4):
            taken.append(k)
            yield _Batch(k)

    pf = DevicePrefetcher(loader(), "cpu")
    assert taken == []  # nothing before the first batch is asked for
    next(pf)
    assert taken == [0, 1]
    next(pf)
    assert taken == [0, 1, 2]
