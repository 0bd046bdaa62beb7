"""Opening and creating cache groups, and encoding features for storage."""

from __future__ import annotations

import numpy as np
import torch
import zarr
from torch import Tensor

from frs_cli.cache.schema import FORMAT_NAME, FORMAT_VERSION, STORAGE_DTYPES
from frs_cli.errors import CacheFormatError


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


def encode(t: Tensor, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Features ``(B, C, H, W)`` in their storage representation: ``(data, scale)``.

    bfloat16 is stored as its uint16 bit pattern. ``int8`` is symmetric per-channel quantisation: each
    view's channel c is stored as ``round(x / scale_c)`` in [-127, 127] with ``scale_c = max|x_c| / 127``
    (float32, ``(B, C)``); the other dtypes have no scale (None).
    """
    if dtype == "int8":
        x = t.float()
        scale = x.abs().amax(dim=(-2, -1)) / 127.0  # (B, C)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero channel stays zero
        q = torch.round(x / scale[..., None, None]).clamp_(-127, 127).to(torch.int8)
        return q.cpu().numpy(), scale.cpu().numpy()
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16), None
    return t.to(getattr(torch, dtype)).cpu().numpy(), None


def decode(a: np.ndarray, dtype: str, scale: np.ndarray | None = None) -> Tensor:
    """Stored array (one view ``(C, H, W)`` or a batch) back to a tensor of the feature dtype; int8 comes back
    as float16 (times its scale: the float16 rounding is ~8x finer than the int8 step)."""
    if dtype == "int8":
        x = torch.from_numpy(np.ascontiguousarray(a)).float()
        return (x * torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32))[..., None, None]).half()
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def open_existing(path: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group | None:
    """The group at ``path`` if something is there, None if nothing is; CacheFormatError if it is not a cache."""
    try:
        group = zarr.open_group(path, mode=mode, storage_options=storage_options)
    except FileNotFoundError:
        return None
    except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError, ValueError, KeyError) as exc:
        raise CacheFormatError(f"cache {path!r}: expected an frs teacher cache, found something else ({exc})") from exc
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT_NAME:
        raise CacheFormatError(f"cache {path!r}: expected an frs teacher cache, found a Zarr group without "
                               f"'format: {FORMAT_NAME}'")
    version = attrs.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CacheFormatError(f"cache {path!r}: format version {version} is newer than this frs reads "
                               f"({FORMAT_VERSION})", hint="upgrade frs")
    return group


def storage_dtype(dtype: str) -> str:
    if dtype not in STORAGE_DTYPES:
        raise CacheFormatError(f"cache dtype: expected one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    return STORAGE_DTYPES[dtype]
