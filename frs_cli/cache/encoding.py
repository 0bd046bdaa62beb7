"""The stored form of the teacher's features: ``FeatureEncoding``, the one owner of a cache's ``storage.dtype``.

Features exist in three forms:

- **features**: what the teacher computes, and what ``decode`` gives back: float16, bfloat16 or float32 (the
  storage dtype), float16 for the scaled encodings;
- **carried**: the tensors ``encode`` returns, the reader hands out and a batch carries to the device
  (``torch_dtype``): the float dtypes as themselves, int8 codes, or uint8 bytes of packed codes;
- **stored**: the numpy arrays the store holds (``numpy_dtype``): as carried, except bfloat16, which numpy
  lacks and which is stored as its uint16 bit pattern.

``to_numpy`` and ``from_numpy`` cross between carried and stored. They are the only place in frs where
bfloat16's bits are reinterpreted as 16-bit integers or back (``tests/test_encodings.py`` checks that).

The scaled encodings (int8, int6, int5, int4: b bits) are symmetric per-channel quantisation: each view's
channel c is stored as ``round(x / scale_c)`` in [-qmax, qmax], ``qmax = 2**(b-1) - 1``, with
``scale_c = max|x_c| / qmax`` (float32, one per view and channel, stored beside the features). int8 codes are
stored as int8; b < 8 codes are packed 8 channels of one position into b bytes (``pack``), which needs cache
format version 2.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from frs_cli import fused_decode, fused_encode
from frs_cli.errors import CacheFormatError

# name -> (numpy dtype stored, torch dtype carried, bits per stored value, scaled)
_FORMS = {
    "float16": (np.float16, torch.float16, 16, False),
    "bfloat16": (np.uint16, torch.bfloat16, 16, False),
    "float32": (np.float32, torch.float32, 32, False),
    "int8": (np.int8, torch.int8, 8, True),
    "int6": (np.uint8, torch.uint8, 6, True),
    "int5": (np.uint8, torch.uint8, 5, True),
    "int4": (np.uint8, torch.uint8, 4, True),
}
NAMES = tuple(_FORMS)  # every storage dtype a cache may name

# a float is non-finite iff its exponent bits are all ones: with the sign bit cleared, its bit pattern is at
# least this (as unsigned integers); one max over the bits is several times faster than isfinite on CPU
_NONFINITE_BITS = {"float16": (np.uint16, 0x7FFF, 0x7C00), "bfloat16": (np.uint16, 0x7FFF, 0x7F80),
                   "float32": (np.uint32, 0x7FFFFFFF, 0x7F800000)}


def _finite_bits(a: np.ndarray, kind: str) -> bool:
    if kind not in _NONFINITE_BITS or a.size == 0:
        return True
    bits, magnitude, first_nonfinite = _NONFINITE_BITS[kind]
    return int((np.ascontiguousarray(a).view(bits) & magnitude).max()) < first_nonfinite


@functools.lru_cache(maxsize=64)
def _unpack_table(bits: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per code i of a packed group: the byte its bit 0 lies in, the byte after it (the last byte for the last
    codes) and the left shift that puts its top bit at bit 15 of the two bytes' 16-bit word; kept per width and
    device (made on a stream's first decode, before any CUDA graph captures one)."""
    first, shift = [bits * i // 8 for i in range(8)], [bits * i % 8 for i in range(8)]
    low = torch.tensor(first).to(device)
    high = torch.tensor([min(k + 1, bits - 1) for k in first]).to(device)
    left = torch.tensor([16 - s - bits for s in shift], dtype=torch.int16).view(8, 1, 1).to(device)
    return low, high, left


def finite(a: np.ndarray) -> bool:
    """Whether a stored numpy array of a plain dtype (float16 masks, float32 scales) holds only finite numbers;
    integer arrays always do. Stored features ask their encoding (``FeatureEncoding.finite``)."""
    return _finite_bits(a, a.dtype.name)


@dataclass(frozen=True)
class FeatureEncoding:
    """How features of storage dtype ``name`` (one of ``NAMES``) are stored, carried and decoded; see the module
    doc. ``FeatureEncoding("int3")`` raises CacheFormatError."""

    name: str
    numpy_dtype: np.dtype = field(init=False)  # the stored arrays' dtype
    torch_dtype: torch.dtype = field(init=False)  # the carried tensors' dtype
    bits: int = field(init=False)  # bits per stored value: 16 or 32 for floats, the code width when scaled
    scaled: bool = field(init=False)  # int codes with per-view, per-channel float32 scales beside them

    def __post_init__(self):
        if self.name not in _FORMS:
            raise CacheFormatError(f"cache dtype: expected one of {', '.join(NAMES)}, got {self.name!r}")
        numpy_dtype, torch_dtype, bits, scaled = _FORMS[self.name]
        object.__setattr__(self, "numpy_dtype", np.dtype(numpy_dtype))
        object.__setattr__(self, "torch_dtype", torch_dtype)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "scaled", scaled)

    @property
    def packed(self) -> bool:
        """Codes narrower than a byte, 8 channels of a position packed into ``bits`` bytes."""
        return self.scaled and self.bits < 8

    @property
    def format_version(self) -> int:
        """The version a cache of these features is written as: 2 for the packed encodings, which came with it
        (an older frs then refuses such a cache in one line), else 1, which every frs reads."""
        return 2 if self.packed else 1

    def stored_channels(self, channels: int) -> int:
        """Channels of the stored features array: ``channels``, or ``channels * bits // 8`` bytes when packed;
        CacheFormatError when a packed encoding cannot hold ``channels``."""
        if not self.packed:
            return channels
        if channels % 8:
            raise CacheFormatError(f"cache dtype {self.name}: packs 8 channels at a time, the teacher's {channels} "
                                   "channels are not a multiple of 8")
        return channels * self.bits // 8

    # -- features -> carried ------------------------------------------------------------------------------
    def encode(self, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """Features ``(B, C, H, W)`` (any float dtype) -> ``(data, scale)``, contiguous, on ``t``'s device: data
        ``(B, C', H, W)`` of ``torch_dtype`` (``C' = stored_channels(C)``), scale ``(B, C)`` float32 when
        scaled, else None."""
        if not self.scaled:
            return t.to(self.torch_dtype).contiguous(), None
        self.stored_channels(t.shape[-3])  # a clear error for channels a packed encoding cannot hold
        qmax = 2 ** (self.bits - 1) - 1
        # (B, C); times the reciprocal, as CUDA divides by a scalar, so CPU and CUDA give the same bits (the
        # largest magnitude is the same value in any float dtype: no float32 copy of the features for it)
        scale = t.abs().amax(dim=(-2, -1)).float() * (1.0 / qmax)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).contiguous()  # an all-zero channel stays zero
        if t.dim() == 4 and t.shape[-3] % 8 == 0 and fused_encode.usable(t):  # one kernel: features in, codes out
            return fused_encode.encode_scaled(t, scale, self.bits), scale
        q = torch.round(t.float() / scale[..., None, None]).clamp_(-qmax, qmax).to(torch.int8)
        return (self.pack(q) if self.packed else q), scale

    def pack(self, q: Tensor) -> Tensor:
        """Codes ``(B, C, H, W)`` in [-2**(bits-1), 2**(bits-1)) -> uint8 ``(B, C*bits/8, H, W)`` (packed only).

        Per position, channels 8g..8g+7 go into bytes ``bits*g .. bits*g+bits-1``: channel 8g+i as a ``bits``-bit
        two's complement at bits ``[bits*i, bits*i+bits)`` of a little-endian integer, byte k holding its bits
        ``[8k, 8k+8)``. All-zero bytes are all-zero codes.
        """
        self._require_packed("pack")
        bits = self.bits
        b, c, h, w = q.shape
        if c % 8:
            raise CacheFormatError(f"cache pack: expected a multiple of 8 channels, got {c}")
        u = (q.to(torch.int32) & (2 ** bits - 1)).view(b, c // 8, 8, h, w)
        out = torch.empty((b, c // 8, bits, h, w), dtype=torch.uint8, device=q.device)
        for k in range(bits):  # byte k: the (at most three) codes whose bits overlap it, shifted into place
            byte = None
            for i in range(8):
                lo = bits * i - 8 * k  # where code i's bit 0 lands, relative to byte k's bit 0
                if -bits < lo < 8:
                    part = u[:, :, i] << lo if lo >= 0 else u[:, :, i] >> -lo
                    byte = part if byte is None else byte | part
            out[:, :, k] = byte & 255
        return out.view(b, c * bits // 8, h, w)

    def unpack(self, a: Tensor) -> Tensor:
        """uint8 ``(..., C*bits/8, H, W)`` from ``pack`` -> int8 codes ``(..., C, H, W)``, on ``a``'s device."""
        return self._codes16(a).to(torch.int8)

    def _codes16(self, a: Tensor) -> Tensor:
        """``unpack``'s codes as int16: the 8 codes of every group in the same few whole-tensor operations (on the
        GPU, a handful of kernels per level whatever the code width, where one per code and step would be 40)."""
        self._require_packed("unpack")
        bits = self.bits
        *lead, cb, h, w = a.shape
        g = self._groups(cb)
        low, high, left = _unpack_table(bits, a.device)
        x = a.reshape(*lead, g, bits, h, w).to(torch.int16)
        # code i sits in byte k_i from bit s_i on, running into byte k_i + 1 when s_i + bits > 8: the little-endian
        # word of bytes (k_i, k_i + 1) holds it (the next byte's bits, when the code does not reach them, fall off
        # the top below); its top bit shifted to bit 15, then back by an arithmetic shift: its two's complement
        word = x.index_select(-3, low) | (x.index_select(-3, high) << 8)  # (..., g, 8, h, w)
        return ((word << left) >> (16 - bits)).reshape(*lead, g * 8, h, w)

    def _groups(self, cb: int) -> int:
        """The groups of 8 codes in ``cb`` packed bytes per position; CacheFormatError unless they fill them."""
        if cb % self.bits:
            raise CacheFormatError(f"cache unpack: expected a multiple of {self.bits} bytes per position, got {cb}")
        return cb // self.bits

    def _require_packed(self, what: str) -> None:
        if not self.packed:
            raise CacheFormatError(f"cache {what}: expected a packed encoding (int6, int5, int4), got {self.name}")

    # -- carried <-> stored -------------------------------------------------------------------------------
    def to_numpy(self, data: Tensor) -> np.ndarray:
        """Carried features on the CPU -> the stored numpy array, sharing memory (bfloat16 as its uint16 bits)."""
        self._check_carried(data, "cache store")
        if self.torch_dtype == torch.bfloat16:
            return data.view(torch.uint16).numpy()
        return data.numpy()

    def from_numpy(self, a: np.ndarray) -> Tensor:
        """A stored numpy array -> the carried tensor, sharing memory where ``a`` is contiguous."""
        if a.dtype != self.numpy_dtype:
            raise CacheFormatError(f"cache read: {self.name} features are stored as {self.numpy_dtype}, got {a.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(a))
        return x.view(torch.bfloat16) if self.torch_dtype == torch.bfloat16 else x

    def _check_carried(self, x: Tensor, what: str) -> None:
        if x.dtype != self.torch_dtype:
            raise CacheFormatError(f"{what}: {self.name} features are carried as {self.torch_dtype}, got {x.dtype}")

    # -- carried -> features ------------------------------------------------------------------------------
    def decode(self, a, scale=None, channels_last: bool = False) -> Tensor:
        """Carried features (a tensor) or stored ones (numpy), one view ``(C', H, W)`` or a batch
        ``(B, C', H, W)``, back to features on the input's device: the storage dtype itself, or for the scaled
        encodings float16 ``codes * scale`` (``scale``: ``(C,)`` or ``(B, C)``; the float16 rounding is finer
        than the int8 step). ``channels_last``: a scaled batch's features are written in channels-last memory (the
        same values; for a consumer whose convolutions run channels-last)."""
        x = self.from_numpy(a) if isinstance(a, np.ndarray) else a
        self._check_carried(x, "cache decode")
        self.check_scales(scale is not None)
        if not self.scaled:
            return x
        s = scale if isinstance(scale, Tensor) else torch.from_numpy(np.ascontiguousarray(scale))
        if self.packed and fused_decode.usable(x) and x.dim() in (3, 4):  # one kernel: bytes in, features out
            self._groups(x.shape[-3])
            if x.dim() == 3:
                return fused_decode.decode_packed(x[None], s[None], self.bits)[0]
            return fused_decode.decode_packed(x, s, self.bits, channels_last)
        codes = self._codes16(x) if self.packed else x
        s = s.to(device=x.device, dtype=torch.float32)[..., None, None]
        # one pass: each code times its scale in float32, the product rounded once to float16, the same numbers as
        # (codes.float() * s).half() without its two intermediate float32 tensors (the cached step's decode moves
        # 3 bytes per value instead of 15)
        layout = torch.channels_last if channels_last and codes.dim() == 4 else torch.contiguous_format
        out = torch.empty(codes.shape, dtype=torch.float16, device=codes.device, memory_format=layout)
        return torch.mul(codes, s, out=out)

    def check_scales(self, present: bool, what: str = "cache decode", hint: str | None = None) -> None:
        """CacheFormatError unless per-channel scales are ``present`` exactly when this encoding has them."""
        if present != self.scaled:
            need = "need their per-channel scales, got none" if self.scaled else "take no per-channel scales, got some"
            raise CacheFormatError(f"{what}: {self.name} features {need}", hint=hint)

    def finite(self, stored: np.ndarray) -> bool:
        """Whether stored features (``numpy_dtype``) hold only finite numbers; int codes always do."""
        return _finite_bits(stored, self.name if stored.dtype == self.numpy_dtype else stored.dtype.name)
