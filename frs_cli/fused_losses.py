"""The two FRS terms on CUDA as fused Triton kernels: each level's logits or features read once forward and once
backward, where the composite PyTorch form (``frs_cli.losses``) moves a float32 copy of them through a dozen passes.

With ``w[b, p]`` a position's weight (``losses.position_weights``, levels side by side) and per level ``(B, C, H, W)``
tensors read through their strides (contiguous or channels-last, any float dtype):

- head term ``sum_{b,p} w * sum_k BCE(sigmoid(s), sigmoid(t))`` with BCE from logits,
  ``max(s, 0) - s * sigmoid(t) + log(1 + exp(-|s|))``; gradient ``g * w * (sigmoid(s) - sigmoid(t))``;
- feature term ``sum_{b,p} w * sum_c (T - A)^2``; gradient to ``A``: ``-(g * w * 2 (T - A))``.

The forward kernels write each position's channel sum (float32), which is weighted and summed as the PyTorch form
does; the backward kernels recompute from the inputs and write the gradient in the input's dtype and layout. The
arithmetic is float32 throughout, as in the PyTorch form; the sums over channels run in another order and Triton's
``exp`` is not PyTorch's, so the results agree to float32 rounding, not bit for bit (``tests/test_gpu.py``).

``usable`` says when they apply: CUDA tensors, Triton importable, ``ENABLED`` (``FRS_FUSED_LOSSES=0`` in the
environment turns them off), no gradient wanted for the teacher's side or the weights. Elsewhere (the CPU, the
tests there) the PyTorch form runs. Triton compiles a kernel on its first launch (the first step, which the CUDA
graphs run eagerly before they capture).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from frs_cli.kernel_check import KernelCheck

try:  # Triton comes with PyTorch's CUDA builds; without it the PyTorch form runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

__all__ = ["ENABLED", "feature_term", "head_term", "usable"]

ENABLED = os.environ.get("FRS_FUSED_LOSSES", "1") != "0"

# a program's tile, (channels, positions, warps), for each kernel: the fastest of those measured at RetinaNet's levels
# (bench/fused_terms.py; docs/BENCHMARKS.md, session 24 on one H200, checked in session 27 on one H100); the forward
# wide in channels, as its accumulator sums over them once
FORWARD_TILE = (256, 16, 4)
BACKWARD_TILE = (64, 32, 4)


def _trial(device: torch.device) -> None:
    """Both terms forward and backward on a tiny input on ``device``."""
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        x = torch.zeros(1, 2, 2, 2, device=device, requires_grad=True)
        t, w = torch.zeros(1, 2, 2, 2, device=device), torch.ones(1, 4, device=device)
        (head_term([x], [t], w) + feature_term([x], [t], w)).backward()


# per device, whether the kernels compiled and ran there on a tiny input
_CHECK = KernelCheck("fused FRS terms: the Triton kernels do not run", "the PyTorch form computes them", _trial)


def usable(*tensors: Tensor) -> bool:
    """Whether the fused kernels take these tensors (see the module doc); on a device's first call the kernels are
    tried on a tiny input (``_CHECK``), and where they fail the PyTorch form runs from then on."""
    return ENABLED and triton is not None and all(t.is_cuda for t in tensors) and _CHECK(tensors[0].device)


def _positions_stride(x: Tensor) -> tuple[Tensor, int, int, int]:
    """``x`` (B, C, H, W), possibly copied, whose H and W flatten to one stride; its batch, channel and position
    strides. Contiguous and channels-last tensors qualify as they are."""
    if x.stride(2) != x.shape[3] * x.stride(3) and x.shape[2] > 1:
        x = x.contiguous()
    return x, x.stride(0), x.stride(1), x.stride(3)


if triton is not None:
    # one forward and one backward kernel for both terms, the term a compile-time switch (HEAD); the sizes and batch
    # strides vary with the canvas: compiled once, not per value (the layouts' unit strides, which set how the tiles
    # are read, are specialised)
    @triton.jit(do_not_specialize=["C", "P", "out_sb", "s_sb", "t_sb"])
    def _forward(s_ptr, t_ptr, out_ptr, C, P, out_sb, s_sb, s_sc, s_sp, t_sb, t_sc, t_sp,
                 HEAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        inside = p < P
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)  # summed over the channels once, after the loop
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            m = (c[:, None] < C) & inside[None, :]
            s = tl.load(s_ptr + b * s_sb + c[:, None] * s_sc + p[None, :] * s_sp, mask=m, other=0.0).to(tl.float32)
            t = tl.load(t_ptr + b * t_sb + c[:, None] * t_sc + p[None, :] * t_sp, mask=m, other=0.0).to(tl.float32)
            if HEAD:  # BCE from logits against sigmoid(t)
                term = tl.maximum(s, 0.0) - s * tl.sigmoid(t) + tl.log(1.0 + tl.exp(-tl.abs(s)))
            else:  # the squared difference
                term = (t - s) * (t - s)
            acc += tl.where(m, term, 0.0)
        tl.store(out_ptr + b * out_sb + p, tl.sum(acc, axis=0), mask=inside)

    @triton.jit(do_not_specialize=["C", "P", "w_sb", "s_sb", "t_sb", "d_sb"])
    def _backward(s_ptr, t_ptr, w_ptr, g_ptr, grad_ptr, C, P, w_sb, s_sb, s_sc, s_sp, t_sb, t_sc, t_sp, d_sb, d_sc,
                  d_sp, HEAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        inside = p < P
        gw = tl.load(g_ptr) * tl.load(w_ptr + b * w_sb + p, mask=inside, other=0.0)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            m = (c[:, None] < C) & inside[None, :]
            s = tl.load(s_ptr + b * s_sb + c[:, None] * s_sc + p[None, :] * s_sp, mask=m, other=0.0).to(tl.float32)
            t = tl.load(t_ptr + b * t_sb + c[:, None] * t_sc + p[None, :] * t_sp, mask=m, other=0.0).to(tl.float32)
            if HEAD:
                grad = (tl.sigmoid(s) - tl.sigmoid(t)) * gw[None, :]
            else:
                grad = -(gw[None, :] * (2.0 * (t - s)))
            tl.store(grad_ptr + b * d_sb + c[:, None] * d_sc + p[None, :] * d_sp, grad.to(grad_ptr.dtype.element_ty),
                     mask=m)


def _launch_forward(head: bool, student: Sequence[Tensor], teacher: Sequence[Tensor], weights: Tensor) -> Tensor:
    """Per level the forward kernel (``head``: the head term's, else the feature term's) into one ``(B, P)``
    float32 tensor of channel sums, levels side by side."""
    sums = torch.empty_like(weights, dtype=torch.float32)
    start, (block_c, block_p, warps) = 0, FORWARD_TILE
    for s, t in zip(student, teacher):
        b, c, h, w = s.shape
        s, *s_st = _positions_stride(s)
        t, *t_st = _positions_stride(t)
        grid = (b, triton.cdiv(h * w, block_p))
        _forward[grid](s, t, sums[:, start:], c, h * w, sums.stride(0), *s_st, *t_st, HEAD=head, BLOCK_C=block_c,
                       BLOCK_P=block_p, num_warps=warps)
        start += h * w
    return sums


def _launch_backward(head: bool, student: Sequence[Tensor], teacher: Sequence[Tensor], weights: Tensor,
                     g: Tensor) -> list[Tensor]:
    grads, start, (block_c, block_p, warps) = [], 0, BACKWARD_TILE
    g = g.to(torch.float32).reshape(1)
    for s, t in zip(student, teacher):
        b, c, h, w = s.shape
        s, *s_st = _positions_stride(s)
        t, *t_st = _positions_stride(t)
        # s's layout, dense: a view with gaps between its images (rows of a longer tensor) gets a gradient without
        # them, in the same memory format
        grad, *d_st = _positions_stride(torch.empty_like(s))
        grid = (b, triton.cdiv(h * w, block_p))
        _backward[grid](s, t, weights[:, start:], g, grad, c, h * w, weights.stride(0), *s_st, *t_st, *d_st,
                        HEAD=head, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps)
        grads.append(grad)
        start += h * w
    return grads


class _Term(torch.autograd.Function):
    """One term (``head``: the head term, else the feature term): ``sum(weights * channel sums)``; the gradient to
    the student's tensors only."""

    @staticmethod
    def forward(ctx, head: bool, weights: Tensor, levels: int, *tensors: Tensor) -> Tensor:
        student, teacher = tensors[:levels], tensors[levels:]
        ctx.head, ctx.levels = head, levels
        ctx.save_for_backward(weights, *tensors)
        return (weights * _launch_forward(head, student, teacher, weights)).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        weights, *tensors = ctx.saved_tensors
        n = ctx.levels
        grads = _launch_backward(ctx.head, tensors[:n], tensors[n:], weights, g)
        return None, None, None, *grads, *([None] * n)


def head_term(student_logits: Sequence[Tensor], teacher_logits: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``losses._head_term`` fused (see the module doc): a float32 scalar."""
    return _Term.apply(True, weights.float().contiguous(), len(teacher_logits), *student_logits,
                       *[t.detach() for t in teacher_logits])


def feature_term(student_adapted: Sequence[Tensor], teacher: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``losses._feature_term`` fused (see the module doc): a float32 scalar."""
    return _Term.apply(False, weights.float().contiguous(), len(teacher), *student_adapted,
                       *[t.detach() for t in teacher])
