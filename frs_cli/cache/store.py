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


def encode(t: Tensor, dtype: str) -> np.ndarray:
    """A feature tensor in its storage representation (bfloat16 is stored as its uint16 bit pattern)."""
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return t.to(getattr(torch, dtype)).cpu().numpy()


def decode(a: np.ndarray, dtype: str) -> Tensor:
    """Stored array back to a tensor of the cache's feature dtype."""
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
