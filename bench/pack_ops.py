"""Time ``FeatureEncoding.pack`` / ``unpack`` and a whole-batch encode/decode per encoding, on the GPU if there is one.

A batch of 8 views at 800x1088 (P3-P7, 256 channels) of random codes. Example:

    python3 bench/pack_ops.py
"""

from __future__ import annotations

import time

import torch

from frs_cli.cache.encoding import FeatureEncoding


def timed(fn, repeats: int = 10) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats * 1e3


def main() -> None:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]
    feats = [torch.randn(8, 256, h, w, device=dev) for h, w in sizes]
    print(f"{torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu'}, batch of 8 views at 800x1088, ms per batch")
    for dtype in ("int8", "int6", "int5", "int4"):
        enc = FeatureEncoding(dtype)
        coded = [enc.encode(f) for f in feats]
        row = {"encode": timed(lambda: [enc.encode(f) for f in feats]),  # noqa: B023
               "decode": timed(lambda: [enc.decode(d, s) for d, s in coded])}  # noqa: B023
        if enc.packed:
            codes = [torch.randint(-3, 4, f.shape, dtype=torch.int8, device=dev) for f in feats]
            packed = [enc.pack(c) for c in codes]
            row["pack"] = timed(lambda: [enc.pack(c) for c in codes])  # noqa: B023
            row["unpack"] = timed(lambda: [enc.unpack(p) for p in packed])  # noqa: B023
        print(dtype, {k: round(v, 2) for k, v in row.items()}, flush=True)


if __name__ == "__main__":
    main()
