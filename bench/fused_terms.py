"""Time the fused FRS terms (``frs_cli.fused_losses``) forward and backward against the bytes they must move.

RetinaNet's levels at one canvas (batch 8, 512 x 704 px by default: P3-P7), the head term at 80 classes (720
channels) and the feature term (256 channels); the student's tensors bf16 as autocast gives them, the teacher's as
the cached side gives them (the head's logits bf16, the decoded features float16), both layouts of the student
(NCHW, the default, and channels-last, ``train.channels_last``) against the teacher's channels-last.

Per configuration of the kernels (``--blocks``: BLOCK_C x BLOCK_P x warps, the tile of the forward and the backward
alike; ``product`` first, the module's own ``FORWARD_TILE`` and ``BACKWARD_TILE``) the device time of the forward and
the backward, each captured as a CUDA graph and replayed ``--reps`` times (so that launch gaps do not count), and the
GB/s that makes of the bytes each must move (forward: read both tensors; backward: read both, write the gradient).
The forward of sessions 19 to 26 (``acc1d``: it summed each tile over its channels as it went, where the product's
adds the tiles up and sums over the channels once at the end) runs beside the product's. Each configuration's value
and gradients are checked against the product's own tiles.

    python3 bench/fused_terms.py --out $OUT/fused_terms.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from frs_cli import fused_losses

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_name

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    @triton.jit(do_not_specialize=["C", "P", "out_sb", "s_sb", "t_sb"])
    def _forward_acc1d(s_ptr, t_ptr, out_ptr, C, P, out_sb, s_sb, s_sc, s_sp, t_sb, t_sc, t_sp,
                       HEAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """The product's forward as it was in sessions 19 to 26: each tile summed over its channels into a
        (BLOCK_P,) accumulator as the loop goes."""
        b = tl.program_id(0).to(tl.int64)
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        inside = p < P
        acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            m = (c[:, None] < C) & inside[None, :]
            s = tl.load(s_ptr + b * s_sb + c[:, None] * s_sc + p[None, :] * s_sp, mask=m, other=0.0).to(tl.float32)
            t = tl.load(t_ptr + b * t_sb + c[:, None] * t_sc + p[None, :] * t_sp, mask=m, other=0.0).to(tl.float32)
            if HEAD:
                term = tl.maximum(s, 0.0) - s * tl.sigmoid(t) + tl.log(1.0 + tl.exp(-tl.abs(s)))
            else:
                term = (t - s) * (t - s)
            acc += tl.sum(tl.where(m, term, 0.0), axis=0)
        tl.store(out_ptr + b * out_sb + p, acc, mask=inside)


# the kernels' tiles of sessions 19 to 26, the forward and the backward alike (bench/loader_cost.py's ``_ot``)
OLD_TILE = (32, 64, 4)


@contextlib.contextmanager
def kernels(forward_tile=None, backward_tile=None, forward=None):
    """Within the block, ``fused_losses`` with these tiles and ``forward`` as its forward kernel (each left as it is
    where None); as before after it."""
    saved = fused_losses._forward, fused_losses.FORWARD_TILE, fused_losses.BACKWARD_TILE
    fused_losses._forward = forward or saved[0]
    fused_losses.FORWARD_TILE, fused_losses.BACKWARD_TILE = forward_tile or saved[1], backward_tile or saved[2]
    try:
        yield
    finally:
        fused_losses._forward, fused_losses.FORWARD_TILE, fused_losses.BACKWARD_TILE = saved


def old_kernels():
    """The fused terms as sessions 19 to 26 ran them (``_forward_acc1d``, ``OLD_TILE`` both ways) within the block."""
    return kernels(OLD_TILE, OLD_TILE, _forward_acc1d)


def grids(canvas: tuple[int, int], strides=(8, 16, 32, 64, 128)) -> list[tuple[int, int]]:
    return [(-(-canvas[0] // s), -(-canvas[1] // s)) for s in strides]


def levels(batch: int, channels: int, shape: list[tuple[int, int]], dtype, nhwc: bool, dev, grad: bool = False):
    out = []
    for h, w in shape:
        x = torch.randn(batch, channels, h, w, device=dev).to(dtype)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(x.requires_grad_(grad))
    return out


def cuda_ms(fn, reps: int) -> float:
    """Device ms of one call of ``fn``: on CUDA, ``fn`` captured once as a CUDA graph and replayed ``reps`` times
    between two events (what a step replayed as one graph pays: no launch gaps), the median of 5 such rounds; off
    CUDA the median wall time of ``reps`` calls."""
    if not torch.cuda.is_available():
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
        return statistics.median(times)
    fn()  # compiled and warm before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    rounds = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            graph.replay()
        b.record()
        b.synchronize()
        rounds.append(a.elapsed_time(b) / reps)
    return statistics.median(rounds)


def forward_with(kernel, head: bool, student, teacher, weights) -> torch.Tensor:
    """``_launch_forward`` of the product with ``kernel`` in place of its forward kernel."""
    with kernels(forward=kernel):
        return fused_losses._launch_forward(head, student, teacher, weights)


def run_kernels(kind: str, head: bool, student, teacher, weights, reps: int):
    """(value, gradients, forward ms, backward ms) of the term with the module's current tiles: ``product``, the
    product's kernels; ``acc1d``, the earlier forward (no gradients, no backward)."""
    if kind == "acc1d":
        sums = forward_with(_forward_acc1d, head, student, teacher, weights)
        fwd = cuda_ms(lambda: forward_with(_forward_acc1d, head, student, teacher, weights), reps)
        return (weights * sums).sum(), None, fwd, None
    fn = fused_losses.head_term if head else fused_losses.feature_term
    value = fn(student, teacher, weights)
    for x in student:
        x.grad = None
    value.backward()
    value = value.detach()
    grads = [x.grad.clone() for x in student]
    with torch.no_grad():  # the forward alone
        fwd = cuda_ms(lambda: fn(student, teacher, weights), reps)
    g = torch.ones((), device=weights.device)
    bwd = cuda_ms(lambda: fused_losses._launch_backward(head, student, teacher, weights, g), reps)
    return value, grads, fwd, bwd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON of every row")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--canvas", default="512,704")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--blocks", default="product,32x64x4,64x32x4,256x16x4,128x32x4,64x64x4",
                   help="BLOCK_C x BLOCK_P x warps (both kernels), comma-separated, or product (the module's tiles)")
    args = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    canvas = tuple(int(v) for v in args.canvas.split(","))
    shape = grids(canvas)
    positions = sum(h * w for h, w in shape)
    weights = torch.rand(args.batch, positions, device=dev)
    product = (fused_losses.FORWARD_TILE, fused_losses.BACKWARD_TILE)
    blocks = [product if b == "product" else (tuple(int(v) for v in b.split("x")),) * 2 for b in args.blocks.split(",")]
    res = {"command": "python3 " + " ".join(sys.argv), "date": date.today().isoformat(),
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else cpu_name(),
           "torch": torch.__version__, "triton": getattr(triton, "__version__", None), "batch": args.batch,
           "canvas": canvas, "grids": shape, "rows": []}
    for term, channels, t_dtype in (("head", 9 * args.classes, torch.bfloat16), ("feature", 256, torch.float16)):
        head = term == "head"
        for layout in ("nchw", "nhwc"):
            torch.manual_seed(0)
            student = levels(args.batch, channels, shape, torch.bfloat16, layout == "nhwc", dev, grad=True)
            teacher = levels(args.batch, channels, shape, t_dtype, True, dev)
            read = sum(x.numel() * x.element_size() for x in (*student, *teacher))
            written = sum(x.numel() * x.element_size() for x in student)
            want = None
            for kind in ("product", "acc1d"):
                for tiles in blocks:
                    with kernels(*tiles):
                        value, grads, fwd, bwd = run_kernels(kind, head, student, teacher, weights, args.reps)
                    if want is None:
                        want = (float(value), grads)
                    (bc, bp, warps), back_tile = tiles
                    row = {"term": term, "student": layout, "kernel": kind, "block_c": bc, "block_p": bp,
                           "warps": warps, "backward_tile": list(back_tile), "forward_ms": fwd, "backward_ms": bwd,
                           "forward_gb_s": read / fwd / 1e6, "backward_gb_s": None if bwd is None else
                           (read + written) / bwd / 1e6,
                           "value_rel": abs(float(value) - want[0]) / abs(want[0]),
                           "grad_rel": None if grads is None else max(
                               float((a.float() - b.float()).norm() / b.float().norm())
                               for a, b in zip(grads, want[1]))}
                    res["rows"].append(row)
                    back = "-" if bwd is None else f"{bwd:.4f} ms ({row['backward_gb_s']:.0f} GB/s)"
                    print(f"{term:8s} {layout} {kind:7s} {bc:3d}x{bp:3d}x{warps} bwd tile {back_tile} fwd {fwd:.4f} ms "
                          f"({row['forward_gb_s']:.0f} GB/s) bwd {back} value {row['value_rel']:.1e} "
                          f"grad {row['grad_rel']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
