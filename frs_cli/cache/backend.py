"""Read access to a cache whatever holds it: a Zarr group (local or URL) or an HDF5 file.

Both backends expose the same layout (``cache.schema``) through one small interface, so ``TeacherCache``,
``verify`` and ``export`` never ask which store they read. Arrays are returned as the store's own array
objects (``zarr.Array`` or ``h5py.Dataset``); both take numpy indexing (``a[...]``, ``a[row]``, ``a[i:j]``)
and have ``shape``, ``dtype`` and ``chunks``.

HDF5 files hold each group attribute as JSON text (HDF5 attributes cannot nest), decoded here on reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator

from frs_cli.cache.store import check_format, exists, is_hdf5, is_url, open_group, what_is_there
from frs_cli.errors import CacheFormatError


@contextlib.contextmanager
def _foreign_files_ignored():
    """Files in the store that are no Zarr node (a note, an editor's backup, a ``.DS_Store``) are not the cache's:
    zarr warns of each while it lists a group, in its own words and with a source line; they are left alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component of a Zarr hierarchy")
        yield


def _children(node) -> tuple[list, list]:
    """The ``(name, array)`` and ``(name, group)`` pairs directly in the Zarr group ``node``, each sorted by name. A
    child whose ``zarr.json`` does not read (cut or edited) is left out, as ``ZarrBackend.has`` reads it: missing."""
    import zarr
    from zarr.core.sync import sync

    try:
        with _foreign_files_ignored():
            return sorted(node.arrays()), sorted(node.groups())
    except ValueError:  # one child's metadata is damaged: zarr's listing parses every child's, so list them one by one
        pass

    async def names():
        return [k async for k in node.store.list_dir(node.path)]

    arrays, groups = [], []
    for name in sorted(sync(names())):
        try:
            with _foreign_files_ignored():
                child = node[name]
        except (KeyError, ValueError):  # zarr.json itself, a foreign file, or the damaged child
            continue
        (groups if isinstance(child, zarr.Group) else arrays).append((name, child))
    return arrays, groups


class ZarrBackend:
    """A Zarr v3 cache group at a local path or URL."""

    kind = "zarr"

    def __init__(self, path: str, storage_options: dict | None = None):
        import zarr

        self.path = path
        try:
            self.root = open_group(path, mode="r", storage_options=storage_options)
        except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError, ValueError, KeyError,
                FileNotFoundError, NotADirectoryError) as exc:
            raise CacheFormatError(f"cache {path!r}: expected an frs teacher cache, found something else: "
                                   f"{what_is_there(path, exc)}") from exc
        self.attrs = dict(self.root.attrs)

    def array(self, name: str):
        try:
            return self.root[name]
        except ValueError as exc:  # its zarr.json is cut or edited (JSON or zarr's metadata error)
            raise CacheFormatError(f"cache {self.path!r}: the metadata of array {name!r} is not readable, damaged "
                                   f"({type(exc).__name__})",
                                   hint=f"frs teacher-cache --pipeline RECIPE --out {self.path} --resume recreates "
                                        "it") from exc

    def has(self, name: str) -> bool:
        """Whether the array ``name`` (a path in the group) exists and its metadata reads: an array whose
        ``zarr.json`` is damaged is missing to every reader, and ``--resume`` recreates it as it does a deleted one."""
        try:
            self.root[name]
        except (KeyError, ValueError):
            return False
        return True

    def arrays(self, group: str) -> list[tuple[str, object]]:
        """The arrays directly inside ``group``, by name."""
        return sorted(self.root[group].arrays())

    def walk(self, group: str = "") -> Iterator[tuple[str, object]]:
        """Every array below ``group`` (``""``: the whole cache) as ``(path, array)``, in sorted order."""
        node = self.root[group] if group else self.root
        prefix = f"{group}/" if group else ""
        arrays, groups = _children(node)
        for name, arr in arrays:
            yield prefix + name, arr
        for name, _ in groups:
            yield from self.walk(prefix + name)

    def groups_in(self, group: str) -> set[str]:
        """The names of the groups directly inside ``group`` (none where it is no group): one listing of it."""
        try:
            node = self.root[group]
        except KeyError:
            return set()
        with _foreign_files_ignored():
            return set(node.group_keys()) if hasattr(node, "group_keys") else set()

    def groups(self) -> list[str]:
        """Every group path below the root, sorted."""
        import zarr

        with _foreign_files_ignored():
            members = list(self.root.members(max_depth=None))
        return sorted(name for name, node in members if isinstance(node, zarr.Group))

    def stored_chunks(self, name: str) -> set[str]:
        """Keys (relative to the array) of the chunks of array ``name`` that exist in the store."""
        from zarr.core.sync import sync

        arr = self.root[name]

        async def keys():
            return {k async for k in arr.store.list_prefix(f"{arr.path}/")}

        return {k[len(arr.path) + 1:] for k in sync(keys())}

    def chunk_key(self, name: str, row: int) -> str:
        """The key of the stored object (shard, or chunk of an unsharded array) that holds row ``row``."""
        arr = self.root[name]
        rows_per_object = (arr.shards or arr.chunks)[0]
        return arr.metadata.encode_chunk_key((row // rows_per_object,) + (0,) * (len(arr.shape) - 1))

    def chunk_stored(self, name: str, row: int) -> bool:
        """Whether the stored object holding row ``row`` of array ``name`` exists (zarr reads an absent one as
        its fill value, so a deleted shard would otherwise read as zeros)."""
        from zarr.core.sync import sync

        arr = self.root[name]
        return bool(sync(arr.store.exists(f"{arr.path}/{self.chunk_key(name, row)}")))

    def nbytes_stored(self, group: str = "") -> int:
        """Bytes of every array below ``group`` in the store, metadata included (zarr's ``nbytes_stored``).

        In a local directory the files are summed directly: zarr asks the store for each chunk's size in turn,
        which at COCO size (hundreds of thousands of shard files) took seconds at every ``distill`` start.
        """
        if is_url(self.path):
            return sum(int(arr.nbytes_stored()) for _, arr in self.walk(group))
        return sum(_tree_bytes(os.path.join(self.path, name)) for name, _ in self.walk(group))

    def close(self) -> None:
        pass


def _tree_bytes(directory: str) -> int:
    total = 0
    with os.scandir(directory) as entries:
        for e in entries:
            total += _tree_bytes(e.path) if e.is_dir(follow_symlinks=False) else e.stat(follow_symlinks=False).st_size
    return total


class HDF5Backend:
    """One HDF5 file with the cache layout, as ``frs cache export`` writes it (local files only)."""

    kind = "hdf5"

    def __init__(self, path: str):
        import h5py

        self.path = path
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise CacheFormatError(f"cache {path!r}: expected an HDF5 file, could not open it ({exc})") from exc
        try:
            self.attrs = {k: json.loads(v) for k, v in self.file.attrs.items()}
        except (TypeError, ValueError) as exc:
            raise CacheFormatError(f"cache {path!r}: expected JSON text attributes (frs cache export), got "
                                   f"something else ({exc})") from exc

    def array(self, name: str):
        if name not in self.file:
            raise CacheFormatError(f"cache {self.path!r}: holds no array {name!r}")
        return self.file[name]

    def has(self, name: str) -> bool:
        return name in self.file

    def arrays(self, group: str) -> list[tuple[str, object]]:
        import h5py

        return sorted((k, v) for k, v in self.file[group].items() if isinstance(v, h5py.Dataset))

    def walk(self, group: str = "") -> Iterator[tuple[str, object]]:
        import h5py

        node = self.file[group] if group else self.file
        prefix = f"{group}/" if group else ""
        items = sorted(node.items())
        for name, obj in items:
            if isinstance(obj, h5py.Dataset):
                yield prefix + name, obj
        for name, obj in items:
            if isinstance(obj, h5py.Group):
                yield from self.walk(prefix + name)

    def groups_in(self, group: str) -> set[str]:
        import h5py

        node = self.file.get(group)
        return {k for k, v in node.items() if isinstance(v, h5py.Group)} if isinstance(node, h5py.Group) else set()

    def groups(self) -> list[str]:
        import h5py

        found = []
        self.file.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Group) else None)
        return sorted(found)

    def stored_chunks(self, name: str) -> set[str] | None:
        """None: not checked. HDF5 files are written whole (export renames a finished file)."""
        del name

    def chunk_key(self, name: str, row: int) -> str:
        return str(row)

    def chunk_stored(self, name: str, row: int) -> bool:
        """True: HDF5 files are written whole."""
        del name, row
        return True

    def nbytes_stored(self, group: str = "") -> int:
        """The datasets' stored bytes below ``group``; the whole file's size for the whole cache (its own
        structures included, as ``cache export`` reports it)."""
        if not group:
            return os.path.getsize(self.path)
        return sum(int(arr.id.get_storage_size()) for _, arr in self.walk(group))

    def close(self) -> None:
        self.file.close()


def open_backend(path: str, storage_options: dict | None = None) -> ZarrBackend | HDF5Backend:
    """The cache at ``path`` (Zarr group, URL, or ``.h5`` file), format checked.

    Raises CacheFormatError when nothing is there, when it is not an frs cache, or when its format version is
    newer than this frs reads.
    """
    path = str(path)
    if not exists(path, storage_options):
        raise CacheFormatError(f"cache: expected an frs teacher cache at {path!r}, found nothing there")
    if is_hdf5(path) and not is_url(path):
        backend = HDF5Backend(path)
    else:
        backend = ZarrBackend(path, storage_options)
    check_format(path, backend.attrs)
    return backend
