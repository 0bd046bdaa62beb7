"""Packed feature codes (int6, int5, int4) decoded on CUDA by one Triton kernel: bytes in, float16 features out.

``FeatureEncoding.decode`` of a packed batch on the GPU is the cached step's first work. In PyTorch it takes a
handful of whole-tensor operations per level (widening the bytes, gathering each code's two bytes, shifting, the
scale); here one kernel per level reads each byte once and writes each feature once, in the layout asked for.

The arithmetic is ``decode``'s: code i of a group of 8 channels sits in byte ``k = bits*i // 8`` of the group from
bit ``s = bits*i % 8`` on (running into byte ``k + 1`` when ``s + bits > 8``); the little-endian word of the two
bytes, shifted so that the code's top bit is the word's sign bit and shifted back arithmetically, is the code; the
code times its channel's float32 scale, rounded once to float16. The same bits as the CPU
(``tests/test_gpu.py``), not only close.

``usable(data)``: a CUDA tensor, Triton importable and ``ENABLED`` (``FRS_FUSED_DECODE=0`` turns it off).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from frs_cli.kernel_check import KernelCheck

try:  # Triton comes with PyTorch's CUDA builds; without it decode runs in PyTorch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

__all__ = ["ENABLED", "decode_packed", "usable"]

ENABLED = os.environ.get("FRS_FUSED_DECODE", "1") != "0"

_BLOCK_P = 128


def _trial(device: torch.device) -> None:
    decode_packed(torch.zeros(1, 5, 2, 2, dtype=torch.uint8, device=device), torch.ones(1, 8, device=device), 5)


# per device, whether the kernel compiled and ran there on a tiny input
_CHECK = KernelCheck("fused decode: the Triton kernel does not run", "packed codes are decoded in PyTorch", _trial)


def usable(data: Tensor) -> bool:
    """Whether the kernel takes ``data`` (see the module doc); on a device's first call it is tried on a tiny input
    (``_CHECK``), and where it fails decode runs in PyTorch from then on."""
    return ENABLED and triton is not None and data.is_cuda and _CHECK(data.device)


if triton is not None:

    @triton.jit(do_not_specialize=["P", "groups", "a_sb", "s_sb", "o_sb"])
    def _decode_packed(a_ptr, scale_ptr, out_ptr, P, groups, a_sb, s_sb, o_sb, o_sc, o_sp,
                       BITS: tl.constexpr, BLOCK_P: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        g = tl.program_id(1)
        p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
        inside = p < P
        i = tl.arange(0, 8)
        first = (BITS * i) // 8
        shift = 32 - (BITS * i) % 8 - BITS  # puts the code's top bit at bit 31 of the 32-bit word
        second = tl.minimum(first + 1, BITS - 1)  # the last codes need no next byte: its bits fall off the top
        rows = a_ptr + b * a_sb + (g * BITS).to(tl.int64) * P
        m = inside[:, None]
        lo = tl.load(rows + first[None, :].to(tl.int64) * P + p[:, None], mask=m, other=0).to(tl.int32)
        hi = tl.load(rows + second[None, :].to(tl.int64) * P + p[:, None], mask=m, other=0).to(tl.int32)
        word = lo | (hi << 8)
        code = (word << shift[None, :]) >> (32 - BITS)
        channel = g * 8 + i
        scale = tl.load(scale_ptr + b * s_sb + channel)
        value = (code.to(tl.float32) * scale[None, :]).to(tl.float16)
        tl.store(out_ptr + b * o_sb + channel[None, :].to(tl.int64) * o_sc + p[:, None] * o_sp, value, mask=m)


def decode_packed(data: Tensor, scale: Tensor, bits: int, channels_last: bool = False) -> Tensor:
    """uint8 ``(B, C*bits/8, H, W)`` packed codes (contiguous per view) and float32 ``(B, C)`` scales on CUDA ->
    float16 ``(B, C, H, W)`` features, channels-last when asked."""
    b, cb, h, w = data.shape
    groups = cb // bits
    data = data.contiguous()
    scale = scale.to(device=data.device, dtype=torch.float32).contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, groups * 8, h, w), dtype=torch.float16, device=data.device, memory_format=layout)
    grid = (b, groups, triton.cdiv(h * w, _BLOCK_P))
    _decode_packed[grid](data, scale, out, h * w, groups, data.stride(0), scale.stride(0), out.stride(0),
                         out.stride(1), out.stride(3), BITS=bits, BLOCK_P=_BLOCK_P)
    return out
