"""Teacher features quantised (int8) or quantised and packed (int6, int5, int4) on CUDA by one Triton kernel.

``FeatureEncoding.encode`` of a scaled encoding is teacher-cache's last work on the device for each level. In
PyTorch it is a chain of whole-tensor operations (a float32 copy, the division, the rounding, the clamp, the cast,
and for the packed encodings about 35 shifts and ors per level over int32 codes). Here one kernel per level reads
each feature once and writes each code or byte once; the per-channel scales stay in PyTorch (one reduction). On
an H100, R50-FPN v2's steady batch of 8 views at 800/1088 px went from 21.1 ms (int8) and 21.9 ms (int5) to
20.6 ms with it (``docs/BENCHMARKS.md``, session 41).

The arithmetic is ``encode``'s and ``pack``'s: a feature as float32, divided by its channel's float32 scale with
IEEE rounding, clamped to ``[-qmax, qmax]`` and rounded half to even (clamping an integer bound first rounds to
the same code), as int8; packed, the 8 codes of a group as ``bits``-bit two's complements side by side in one
little-endian word, its bytes in order. The same bytes as the CPU (``tests/test_gpu.py``), not only close.

``usable(t)``: a CUDA tensor, Triton importable and ``ENABLED`` (``FRS_FUSED_ENCODE=0`` turns it off).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from frs_cli.kernel_check import KernelCheck

try:  # Triton comes with PyTorch's CUDA builds; without it encode runs in PyTorch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

__all__ = ["ENABLED", "encode_scaled", "usable"]

ENABLED = os.environ.get("FRS_FUSED_ENCODE", "1") != "0"

_BLOCK_P = 256


def _trial(device: torch.device) -> None:
    x, scale = torch.zeros(1, 8, 2, 2, device=device), torch.ones(1, 8, device=device)
    encode_scaled(x, scale, 5)
    encode_scaled(x, scale, 8)


# per device, whether the kernel compiled and ran there on a tiny input
_CHECK = KernelCheck("fused encode: the Triton kernel does not run", "features are encoded in PyTorch", _trial)


def usable(t: Tensor) -> bool:
    """Whether the kernel takes ``t`` (see the module doc); on a device's first call it is tried on a tiny input
    (``_CHECK``), and where it fails encode runs in PyTorch from then on."""
    return ENABLED and triton is not None and t.is_cuda and _CHECK(t.device)


if triton is not None:

    @triton.jit(do_not_specialize=["P", "x_sb", "s_sb", "o_sb"])
    def _encode(x_ptr, scale_ptr, out_ptr, P, x_sb, s_sb, o_sb, BITS: tl.constexpr, BLOCK_P: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        g = tl.program_id(1)  # a group of 8 channels
        p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        inside = p < P
        m = inside[:, None]
        i = tl.arange(0, 8)
        channel = g * 8 + i
        x = tl.load(x_ptr + b * x_sb + channel[None, :].to(tl.int64) * P + p[:, None], mask=m, other=0.0)
        scale = tl.load(scale_ptr + b * s_sb + channel)
        qmax = (1 << (BITS - 1)) - 1
        y = tl.div_rn(x.to(tl.float32), scale[None, :])
        y = tl.minimum(tl.maximum(y, -qmax), qmax)
        # 1.5 * 2**23 added and taken away: y (at most qmax here) rounded half to even, as torch.round rounds
        code = ((y + 12582912.0) - 12582912.0).to(tl.int32)
        if BITS == 8:
            out = out_ptr + b * o_sb + channel[None, :].to(tl.int64) * P + p[:, None]
            tl.store(out, code.to(tl.int8), mask=m)
        else:
            # the codes' bits do not overlap, so their sum is the group's word
            u = (code & ((1 << BITS) - 1)).to(tl.int64) << (BITS * i)[None, :].to(tl.int64)
            word = tl.sum(u, axis=1)
            rows = out_ptr + b * o_sb + (g * BITS).to(tl.int64) * P + p
            for k in tl.static_range(BITS):
                tl.store(rows + k * P, ((word >> (8 * k)) & 255).to(tl.uint8), mask=inside)


def encode_scaled(t: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Features ``(B, C, H, W)`` (any float dtype, C a multiple of 8) and their float32 ``(B, C)`` scales on CUDA
    -> int8 codes ``(B, C, H, W)`` (``bits`` 8), or uint8 ``(B, C*bits/8, H, W)`` packed as ``pack`` packs them."""
    b, c, h, w = t.shape
    t = t.contiguous()
    scale = scale.to(dtype=torch.float32).contiguous()
    if bits == 8:
        out = torch.empty((b, c, h, w), dtype=torch.int8, device=t.device)
    else:
        out = torch.empty((b, c * bits // 8, h, w), dtype=torch.uint8, device=t.device)
    grid = (b, c // 8, triton.cdiv(h * w, _BLOCK_P))
    _encode[grid](t, scale, out, h * w, t.stride(0), scale.stride(0), out.stride(0), BITS=bits, BLOCK_P=_BLOCK_P)
    return out
