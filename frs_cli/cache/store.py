"""Where a cache lives: local paths and fsspec URLs, opening Zarr groups there, and encoding features.

A cache path is a local directory (``runs/cache.zarr``) or any URL zarr's fsspec store layer understands
(``file:///data/cache.zarr``, ``memory://cache.zarr``, ``s3://bucket/cache.zarr`` with s3fs installed).
Everything that touches the filesystem by path goes through here, so URLs work wherever paths do.
"""

from __future__ import annotations

import numpy as np
import torch
import zarr
from torch import Tensor

from frs_cli.cache.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PACKED_BITS,
    SCALED_DTYPES,
    STORAGE_DTYPES,
    stored_channels,
)
from frs_cli.errors import CacheFormatError, ConfigError

HDF5_SUFFIXES = (".h5", ".hdf5")


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL for fsspec (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def is_hdf5(path: str) -> bool:
    """Whether ``path`` names an HDF5 file (by its suffix), the form ``frs cache export`` writes."""
    return str(path).lower().endswith(HDF5_SUFFIXES)


def url_options(path: str, storage_options: dict | None = None) -> dict | None:
    """fsspec options for ``path``: a ``file://`` URL gets ``auto_mkdir`` (zarr writes into new folders)."""
    if not is_url(path):
        return storage_options
    opts = dict(storage_options or {})
    if str(path).startswith("file://"):
        opts.setdefault("auto_mkdir", True)
    return opts


def _fsspec(path: str, storage_options: dict | None):
    try:
        import fsspec
    except ImportError as exc:
        raise ConfigError(f"cache {path!r}: a URL needs fsspec, which is not installed",
                          hint="pip install 'frs[remote]'") from exc
    return fsspec.core.url_to_fs(path, **(storage_options or {}))


def exists(path: str, storage_options: dict | None = None) -> bool:
    """Whether anything (a file or a folder) is at ``path``."""
    if not is_url(path):
        from pathlib import Path

        return Path(path).exists()
    fs, inner = _fsspec(path, url_options(path, storage_options))
    return bool(fs.exists(inner))


def open_group(path: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """``zarr.open_group`` at a local path or URL (``mode`` as zarr's: r, r+, a, w)."""
    if is_url(path):
        _fsspec(path, None)  # a clear error when fsspec is missing
    return zarr.open_group(path, mode=mode, storage_options=url_options(path, storage_options))


def check_format(path: str, attrs: dict) -> None:
    """CacheFormatError unless ``attrs`` are an frs cache's of a format version this frs reads."""
    if attrs.get("format") != FORMAT_NAME:
        raise CacheFormatError(f"cache {path!r}: expected an frs teacher cache, found a group without "
                               f"'format: {FORMAT_NAME}'")
    version = attrs.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CacheFormatError(f"cache {path!r}: format version {version} is newer than this frs reads "
                               f"({FORMAT_VERSION})", hint="upgrade frs")


def open_existing(path: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group | None:
    """The Zarr cache group at ``path``, None if nothing is there; CacheFormatError if it is not a cache."""
    if not exists(path, storage_options):
        return None
    try:
        group = open_group(path, mode=mode, storage_options=storage_options)
    except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError, ValueError, KeyError,
            FileNotFoundError) as exc:
        raise CacheFormatError(f"cache {path!r}: expected an frs teacher cache, found something else ({exc})") from exc
    check_format(path, dict(group.attrs))
    return group


def codec(name: str):
    """Zarr v3 compressor list for a codec name."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "none":
        return None
    if name == "zstd":
        return [ZstdCodec(level=3)]
    if name == "blosc":
        return [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]
    raise CacheFormatError(f"cache codec: expected none, zstd or blosc, got {name!r}")


def _bits(dtype: str) -> int:
    return 8 if dtype == "int8" else PACKED_BITS[dtype]


def encode(t: Tensor, dtype: str) -> tuple[Tensor, Tensor | None]:
    """Features ``(B, C, H, W)`` in their storage representation, as contiguous tensors on ``t``'s device:
    ``(data, scale)``.

    bfloat16 is stored as its uint16 bit pattern. The scaled dtypes (int8, int6, int5, int4: b bits) are
    symmetric per-channel quantisation: each view's channel c is stored as ``round(x / scale_c)`` in
    [-qmax, qmax], ``qmax = 2**(b-1) - 1``, with ``scale_c = max|x_c| / qmax`` (float32, ``(B, C)``). int8 codes
    are stored as int8; b < 8 codes are packed (``pack``) into uint8 ``(B, C*b/8, H, W)``. Other dtypes have no
    scale (None).
    """
    if dtype in SCALED_DTYPES:
        bits = _bits(dtype)
        stored_channels(t.shape[-3], dtype)  # a clear error for channels a packed dtype cannot hold
        qmax = 2 ** (bits - 1) - 1
        x = t.float()
        # (B, C); times the reciprocal, as CUDA divides by a scalar, so CPU and CUDA give the same bits
        scale = x.abs().amax(dim=(-2, -1)) * (1.0 / qmax)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
        q = torch.round(x / scale[..., None, None]).clamp_(-qmax, qmax).to(torch.int8)
        return (q if bits == 8 else pack(q, bits)), scale.contiguous()
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).contiguous().view(torch.uint16), None
    return t.to(getattr(torch, dtype)).contiguous(), None


def pack(q: Tensor, bits: int) -> Tensor:
    """Codes ``(B, C, H, W)`` in [-2**(bits-1), 2**(bits-1)) -> uint8 ``(B, C*bits/8, H, W)``.

    Per position, channels 8g..8g+7 go into bytes ``bits*g .. bits*g+bits-1``: channel 8g+i as a ``bits``-bit
    two's complement at bits ``[bits*i, bits*i+bits)`` of a little-endian integer, byte k holding its bits
    ``[8k, 8k+8)``. All-zero bytes are all-zero codes.
    """
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


def unpack(a: Tensor, bits: int) -> Tensor:
    """uint8 ``(..., C*bits/8, H, W)`` from ``pack`` -> int8 codes ``(..., C, H, W)``, on ``a``'s device."""
    *lead, cb, h, w = a.shape
    if cb % bits:
        raise CacheFormatError(f"cache unpack: expected a multiple of {bits} bytes per position, got {cb}")
    g = cb // bits
    x = a.reshape(*lead, g, bits, h, w).to(torch.int32)
    codes = []
    for i in range(8):  # code i sits in byte k from bit s on, running into byte k + 1 when s + bits > 8
        k, s = divmod(bits * i, 8)
        word = x[..., k, :, :] if s + bits <= 8 else x[..., k, :, :] | (x[..., k + 1, :, :] << 8)
        codes.append((word >> s) & (2 ** bits - 1))
    u = torch.stack(codes, dim=-3)  # (..., G, 8, H, W)
    q = u - ((u >> (bits - 1)) << bits)  # two's complement: codes >= 2**(bits-1) are negative
    return q.to(torch.int8).reshape(*lead, g * 8, h, w)


def _tensor(a) -> Tensor:
    return a if isinstance(a, Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def decode(a, dtype: str, scale=None) -> Tensor:
    """Stored features (numpy or tensor, one view ``(C', H, W)`` or a batch ``(B, C', H, W)``) back to a tensor of
    the feature dtype, on the input's device. Scaled dtypes come back as float16 ``codes * scale`` (``scale``:
    ``(C,)`` or ``(B, C)``; the float16 rounding is finer than the int8 step)."""
    x = _tensor(a)
    if dtype not in STORAGE_DTYPES:
        raise CacheFormatError(f"cache decode: expected one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    if x.dtype != getattr(torch, STORAGE_DTYPES[dtype]) and not (dtype == "bfloat16" and x.dtype == torch.bfloat16):
        raise CacheFormatError(f"cache decode: {dtype} features are stored as {STORAGE_DTYPES[dtype]}, got {x.dtype}")
    if dtype in SCALED_DTYPES:
        if scale is None:
            raise CacheFormatError(f"cache decode: {dtype} features need their per-channel scales, got none")
        if dtype != "int8":
            x = unpack(x, PACKED_BITS[dtype])
        s = _tensor(scale).to(device=x.device, dtype=torch.float32)
        return (x.float() * s[..., None, None]).half()
    if dtype == "bfloat16":
        return x if x.dtype == torch.bfloat16 else x.view(torch.bfloat16)
    return x


def storage_dtype(dtype: str) -> str:
    if dtype not in STORAGE_DTYPES:
        raise CacheFormatError(f"cache dtype: expected one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    return STORAGE_DTYPES[dtype]
