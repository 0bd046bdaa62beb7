"""Reading a teacher cache: the index, one view's targets, the teacher head, and a Dataset for training.

``TeacherCache`` reads a Zarr group (local path or fsspec URL) or an HDF5 file written by ``frs cache export``
through one backend interface (``cache.backend``). It is safe to hand to DataLoader workers: the store is
opened again lazily in each process, and a bucket's arrays only when a view of it is first read.

Arrays of a local Zarr directory whose layout allows it (uncompressed, one row per inner chunk: what
``teacher-cache`` writes with ``codec = "none"``) are read with one ``os.pread`` per array and view
(``cache.direct``), bypassing zarr-python's event loop; other stores and codecs are read through zarr.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import torch
from torch import Tensor

from frs_cli.archs import FAMILIES, FrsSignature, LevelSpec
from frs_cli.cache.backend import open_backend
from frs_cli.cache.checksum import mismatched
from frs_cli.cache.encoding import NAMES, FeatureEncoding, finite
from frs_cli.cache.identity import comparable_dataset, refuse_other_images, refuse_other_recipe
from frs_cli.cache.schema import INDEX_ARRAYS, Bucket, required_arrays, view_code, view_name
from frs_cli.cache.store import CODECS, is_url
from frs_cli.data.coco import CocoViews, Sample
from frs_cli.data.geometry import GeometryConfig, ViewGeometry, canonical_view
from frs_cli.data.targets import CachedTargets
from frs_cli.errors import CacheFormatError, CacheMismatchError, DataError
from frs_cli.files import missing_file, plural
from frs_cli.lock import describe, live_holder


def required_cache_arrays(attrs: dict) -> list[str]:
    """Every array a cache with root attributes ``attrs`` must hold (``schema.required_arrays``), with the
    teacher head's parameter names from its recorded ``head_spec``."""
    from frs_cli.models import build_cls_head

    try:
        names = list(build_cls_head(attrs["teacher"]["head_spec"]).state_dict())
    except Exception:  # noqa: BLE001 - an edited or damaged spec: attribute_faults names it, so no head is required
        names = []
    return required_arrays(attrs, names)


def repair_hint(path: str, kind: str = "zarr") -> str:
    """What repairs a damaged cache at ``path``: ``teacher-cache --resume`` for Zarr; an exported HDF5 file is
    not repaired in place (``teacher-cache`` refuses ``.h5``), it is exported again from a repaired Zarr cache."""
    if kind == "hdf5":
        return ("an exported file is not repaired in place: repair the Zarr cache it was exported from with "
                "frs teacher-cache --pipeline RECIPE --out ZARR --resume, then frs cache export ZARR "
                f"{path} again")
    return (f"frs cache verify {path} lists the damage; frs teacher-cache --pipeline RECIPE --out {path} --resume "
            "repairs it")


class TeacherCache:
    """A cache opened for reading. ``require_complete`` refuses a cache whose writer has not finished.

    ``path``: a Zarr group (local path or fsspec URL) or an ``.h5`` file; ``storage_options`` go to fsspec.
    """

    def __init__(self, path: str, require_complete: bool = True, storage_options: dict | None = None):
        self.path = str(path)
        self.storage_options = storage_options
        root = open_backend(self.path, storage_options)
        self._backend, self._pid = root, os.getpid()
        self.attrs = dict(root.attrs)
        if self.attrs.get("state") == "creating":
            raise CacheFormatError(f"cache {self.path!r}: its writer stopped while creating it",
                                   hint="run teacher-cache again to recreate it")
        refuse_misshapen(self.path, root, self.attrs)
        if require_complete:
            holder = live_holder(self.path)
            if holder is not None:  # still written, or verified and repaired (--resume) while marked complete
                state = "is incomplete, still" if self.attrs.get("state") != "complete" else "is"
                raise CacheFormatError(f"cache {self.path!r}: {state} being written by {describe(holder)}",
                                       hint="wait for that job to finish")
        if require_complete and self.attrs.get("state") != "complete":
            raise CacheFormatError(f"cache {self.path!r}: is incomplete (its writer did not finish)",
                                   hint="run teacher-cache with --resume to finish it")
        missing = [n for n in self.required_arrays() if not root.has(n)]
        refuse_renamed(self.path, root, self.attrs, missing)  # not missing: stored under another name
        if any(n.startswith("index/") for n in missing) or (require_complete and missing):
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise CacheFormatError(f"cache {self.path!r}: expected every array of the cache format, "
                                   f"{len(missing)} missing ({shown})",
                                   hint=repair_hint(self.path, root.kind))
        self.levels = [LevelSpec(d["name"], d["stride"], d["channels"]) for d in self.attrs["levels"]]
        self.buckets = [Bucket.from_dict(b) for b in self.attrs["buckets"]]
        self.dtype = self.attrs["storage"]["dtype"]  # the features' storage dtype, by name
        self.encoding = FeatureEncoding(self.dtype)  # how they are stored and decoded
        self.image_id = root.array("index/image_id")[...]
        self.view = root.array("index/view")[...]
        self.bucket = root.array("index/bucket")[...]
        self.row = root.array("index/row")[...]
        self.geometry = root.array("index/geometry")[...]
        damaged = mismatched(self.attrs, {f"index/{n}": a for n, a in self.index_arrays().items()})
        if damaged:  # every view would be looked up in the wrong place
            raise CacheFormatError(f"cache {self.path!r}: its index does not match its checksums "
                                   f"({', '.join(damaged)}): the file is damaged", hint=repair_hint(self.path, root.kind))
        if require_complete:
            unmarked = sum(int((root.array(f"buckets/{b.name}/done")[...] == 0).sum()) for b in self.buckets)
            if unmarked:  # complete, yet views not marked written: reading them would give the fill value
                raise CacheFormatError(f"cache {self.path!r}: is marked complete, but {unmarked} of its "
                                       f"{len(self.row)} views are not marked written (a done-flag chunk is lost)",
                                       hint=repair_hint(self.path, root.kind))
        self._lookup = {(int(i), int(v)): k for k, (i, v) in enumerate(zip(self.image_id, self.view))}
        self._arrays = None  # {bucket: per level (features, scale or None, mask)}, filled as buckets are read
        self._memory = None
        self._crcs = None  # (pid, {(bucket, first row): stored checksums of that chunk's rows})
        self._written = None  # an incomplete cache's done flags (``written``), read once
        self.direct = True  # read local uncompressed Zarr arrays with os.pread (False: always through zarr)

    def required_arrays(self) -> list[str]:
        """Every array the format requires of this cache (``schema.required_arrays``), the teacher head included."""
        return required_cache_arrays(self.attrs)

    @property
    def backend(self):
        """The store backend, opened in this process (h5py and fsspec handles do not survive a fork)."""
        if self._pid != os.getpid():
            self._backend, self._pid, self._arrays = open_backend(self.path, self.storage_options), os.getpid(), None
            self._crcs = None
        return self._backend

    def __getstate__(self) -> dict:  # store handles stay behind; each process opens its own
        return {**self.__dict__, "_backend": None, "_arrays": None, "_pid": None, "_crcs": None}

    # -- what the cache holds -------------------------------------------------------------------------
    @property
    def views(self) -> list[str]:
        return list(self.attrs["views"])

    @functools.cached_property
    def geometry_config(self) -> GeometryConfig:
        """The geometry the cache was written with (its ``geometry`` attribute)."""
        return GeometryConfig(**self.attrs["geometry"])

    @property
    def fingerprints(self) -> dict:
        return dict(self.attrs["fingerprints"])

    @property
    def teacher(self) -> dict:
        return dict(self.attrs["teacher"])

    def check_attributes(self, faults: list[str] | None = None) -> TeacherCache:
        """CacheFormatError when the root attributes contradict the arrays they describe (``verify``'s check): no
        checksum covers an edited or damaged ``zarr.json``, whose numbers would decode or place views wrongly, or
        blame the student for the cache's levels. A training run checks this before it reads a view. ``faults``:
        this cache's ``attribute_faults`` where the caller has found them already (``None``: found here, their kinds
        having been checked when the cache was opened). Returns the cache."""
        if faults is None:
            faults = contradiction_faults(self._backend, self.attrs, self.index_arrays())
        if faults:
            raise attributes_error(self.path, self._backend.kind, faults)
        return self

    def index_arrays(self) -> dict[str, np.ndarray]:
        """The index arrays as read when the cache was opened, by name (``INDEX_ARRAYS``, as ``read_index``)."""
        return {n: getattr(self, n) for n in INDEX_ARRAYS}

    @property
    def teacher_autocast(self) -> bool:
        """Whether the teacher ran in bf16 autocast (on CUDA) when this cache was written; caches written before
        this was recorded were written so on GPUs (on the CPU autocast is off either way)."""
        return self.teacher.get("autocast", "bfloat16") == "bfloat16"

    @property
    def signature(self) -> FrsSignature:
        """The cached teacher's family, levels and classification channels (what a student must match)."""
        spec = self.teacher["head_spec"]
        # caches written before other families existed hold RetinaNet heads without "cls_channels"
        channels = spec.get("cls_channels", spec.get("num_anchors", 1) * spec.get("num_classes", 0))
        return FrsSignature(spec["family"], tuple(self.levels), int(channels))

    def __len__(self) -> int:
        return len(self.image_id)

    def find(self, image_id: int, view: str) -> int:
        """The index of view ``view`` of image ``image_id`` (any spelling: ``orig@800`` is ``orig`` in a cache at
        short side 800; ConfigError for a name that is no view)."""
        key = (int(image_id), view_code(canonical_view(view, self.geometry_config), self.views))
        if key not in self._lookup:
            if int(image_id) not in self._image_ids:
                split = self.attrs.get("dataset", {}).get("split", "?")
                raise CacheFormatError(f"cache {self.path!r}: holds no image {image_id} (it holds the "
                                       f"{len(self._image_ids)} images of split {split!r}, ids "
                                       f"{min(self._image_ids)}..{max(self._image_ids)})")
            raise CacheFormatError(f"cache {self.path!r}: holds no view {view!r} of image {image_id} (its views: "
                                   f"{', '.join(self.views)})")
        return self._lookup[key]

    @functools.cached_property
    def _image_ids(self) -> set[int]:
        return {int(i) for i in self.image_id}

    def view_name(self, k: int) -> str:
        """The name of view ``k`` (``orig``, ``hflip``, or one at another short side such as ``hflip@640``)."""
        return view_name(self.view[k], self.views)

    def view_geometry(self, k: int) -> ViewGeometry:
        return ViewGeometry.from_row(self.geometry[k])

    def check_fingerprints(self, teacher_cfg, index, geometry) -> None:
        """CacheMismatchError naming the first of teacher / dataset / geometry that differs from a recipe's: its
        teacher config, its split's index and its geometry (``identity.recipe_fingerprints``)."""
        refuse_other_recipe(self.path, self.attrs, teacher_cfg, index, geometry,
                            classes_hint="set data.label_map as the cache was written, or write a cache for this "
                                         "recipe with frs teacher-cache",
                            hint="write a cache for this recipe with frs teacher-cache")

    def check_image_files(self, dataset: CocoViews) -> None:
        """CacheMismatchError when ``dataset``'s image files are not those the cache was written from
        (``identity.refuse_other_images``: a file re-encoded or swapped changes its size)."""
        refuse_other_images(self.path, self.attrs, dataset, hint="restore the image files the cache was written "
                                                                 "from, or write the cache again with frs teacher-cache",
                            backend=self.backend)

    def dataset(self, data_root: str | None = None) -> CocoViews:
        """The cached split as ``CocoViews`` (from ``data_root`` if given, else where the writer read it),
        checked against the cache's dataset fingerprint."""
        from pathlib import Path

        from frs_cli.data.coco import CocoIndex

        info = self.attrs["dataset"]
        split = info["split"]
        if data_root is None:
            ann = Path(info["annotation_file"])
            image_dir = ann.parent.parent / split
            if not ann.is_file():  # the dataset moved since the cache was written
                raise DataError(f"cache {self.path!r}: expected its dataset's annotation file at {str(ann)!r}, where "
                                f"it was written from, but it {missing_file(ann)}",
                                hint="point --data at the dataset's folder where it is now")
        else:
            ann = Path(data_root) / "annotations" / f"instances_{split}.json"
            image_dir = Path(data_root) / split
        label_map = "category_id" if info["label_to_category"] == list(range(len(info["label_to_category"]))) \
            else "contiguous"
        index = CocoIndex(ann, label_map)
        found = comparable_dataset(self.fingerprints.get("dataset"), index)
        if found != self.fingerprints.get("dataset"):  # no recipe here: the dataset itself is the other one
            raise CacheMismatchError(
                f"cache {self.path!r}: was written for another dataset (cache {self.fingerprints.get('dataset')}, "
                f"{ann} {found})", hint="point --data at the dataset the cache was written from (its annotation "
                                        f"file was {info['annotation_file']})")
        views = CocoViews(index, image_dir, self.geometry_config)
        self.check_image_files(views)
        return views

    def nbytes_stored(self) -> dict[str, int]:
        """Bytes the cache's chunks and metadata occupy in its store: ``views`` (what grows with the dataset:
        features, masks, done flags, checksums), ``fixed`` (index, teacher head) and ``total``."""
        views = self.backend.nbytes_stored("buckets")
        total = self.backend.nbytes_stored()
        return {"views": views, "fixed": total - views, "total": total}

    @property
    def num_images(self) -> int:
        return len(set(self.image_id.tolist()))

    # -- reading ----------------------------------------------------------------------------------------
    def _open(self):
        """Every bucket's arrays (``preload`` reads them all)."""
        for b in self.buckets:
            self._bucket(b.name)
        return self._arrays

    def _bucket(self, name: str) -> list[tuple]:
        """Per level ``(features, scale or None, mask)`` of bucket ``name``, opened in this process on first use."""
        backend = self.backend  # in a forked worker: reopens the store and drops the parent's array handles
        if self._arrays is None:
            self._arrays = {}
        if name not in self._arrays:
            bucket = next(b for b in self.buckets if b.name == name)
            self._arrays[name] = [self._level_arrays(backend, bucket, lv, size)
                                  for lv, size in zip(self.levels, bucket.level_sizes, strict=True)]
        return self._arrays[name]

    def _array(self, backend, name: str):
        """Array ``name``: a ``DirectArray`` where its layout allows one (local Zarr directory, uncompressed),
        else the backend's own array object."""
        if self.direct and backend.kind == "zarr" and not is_url(self.path):
            from frs_cli.cache.direct import DirectArray

            found = DirectArray.open(os.path.join(self.path, name), name)
            if found is not None:
                return found
        try:
            return backend.array(name)
        except KeyError:  # an incomplete cache opened for what it holds: an array of the format is gone
            raise CacheFormatError(f"cache {self.path!r}: expected the array {name} of the cache format, but it is "
                                   "missing", hint=repair_hint(self.path, backend.kind)) from None

    def preload(self) -> None:
        """Read every view into memory now (one zarr call per array), so ``read`` never touches the store.

        Worth it for caches that fit in RAM: per-view reads of small views are dominated by per-call overhead.
        """
        memory = {}
        for name, arrays in self._open().items():
            memory[name] = [tuple(None if a is None else self._whole(a, name) for a in level) for level in arrays]
        self._memory = memory

    def _whole(self, arr, bucket: str) -> np.ndarray:
        try:
            return arr[...]
        except (ValueError, RuntimeError, OSError) as exc:  # a truncated shard, a codec failure, I/O
            raise CacheFormatError(f"cache {self.path!r}: array {_array_name(arr)} of bucket {bucket} is "
                                   f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
                                   hint=repair_hint(self.path, self.backend.kind)) from exc

    def _level_arrays(self, backend, bucket: Bucket, level: LevelSpec, size: tuple[int, int]) -> tuple:
        """(features, scale or None, mask) arrays of ``level`` (grid ``size``) of ``bucket``; CacheFormatError in one
        line when the features' shape or dtype is not what the attributes say (an edited or damaged ``zarr.json``:
        decoding would fail without saying why, or give wrong numbers)."""
        prefix = f"buckets/{bucket.name}/{level.name}"
        scale = self._array(backend, f"{prefix}/scale") if self.encoding.scaled else None
        features = self._array(backend, f"{prefix}/features")
        expected = (bucket.count, self.encoding.stored_channels(level.channels), *size)
        if tuple(features.shape) != expected or np.dtype(features.dtype) != self.encoding.numpy_dtype:
            raise CacheFormatError(
                f"cache {self.path!r}: {prefix}/features is {tuple(features.shape)} {np.dtype(features.dtype)}, its "
                f"attributes say {expected} {self.encoding.numpy_dtype} (storage.dtype {self.dtype!r}, {level.name} "
                f"channels {level.channels})", hint=f"the attributes were edited or damaged; frs cache verify "
                                                    f"{self.path} lists what disagrees; write the cache again")
        return features, scale, self._array(backend, f"{prefix}/mask")

    def _checksums(self, bucket: str, row: int) -> np.ndarray:
        """The stored CRC-32s of view ``row`` of ``bucket``, ``(2 * levels,)`` uint32.

        Read by the chunk of ``crc`` that holds the row (one small read per chunk and process), never the whole
        table: its size grows with the cache, and every worker of every epoch would read it again.
        """
        if self._crcs is None or self._crcs[0] != os.getpid():
            self._crcs = (os.getpid(), {})
        table = self._crcs[1]
        key = ("array", bucket)
        if key not in table:
            table[key] = self._array(self.backend, f"buckets/{bucket}/crc")
        arr = table[key]
        if hasattr(arr, "read_row"):
            return arr.read_row(row)
        per_chunk = arr.chunks[0]
        first = row // per_chunk * per_chunk
        if (bucket, first) not in table:
            try:
                table[bucket, first] = np.asarray(arr[first : first + per_chunk])
            except (ValueError, RuntimeError, OSError) as exc:
                raise CacheFormatError(f"cache {self.path!r}: checksums of bucket {bucket} rows {first}.. are "
                                       f"unreadable ({type(exc).__name__})",
                                       hint=repair_hint(self.path, self.backend.kind)) from exc
        return table[bucket, first][row - first]

    def _fault(self, k: int, array: str, what: str, hint: str | None = None) -> CacheFormatError:
        b = self.buckets[int(self.bucket[k])].name
        return CacheFormatError(f"cache {self.path!r}: image {int(self.image_id[k])} {self.view_name(k)} "
                                f"(bucket {b}, row {int(self.row[k])}): {array} {what}",
                                hint=hint or repair_hint(self.path, self.backend.kind))

    def _mismatch(self, k: int, array: str) -> CacheFormatError:
        """The fault of view ``k``'s ``array`` (``"P3/features"``) whose CRC-32 does not match: named missing when
        the stored chunk it or its checksums came from is gone (zarr reads an absent chunk as zeros)."""
        prefix, row = f"buckets/{self.buckets[int(self.bucket[k])].name}", int(self.row[k])
        level, kind = array.split("/")
        sources = ["crc", array] + ([f"{level}/scale"] if kind == "features" and self.encoding.scaled else [])
        for name in sources:
            if not self.backend.chunk_stored(f"{prefix}/{name}", row):
                return self._fault(k, name, "is missing: its chunk is not in the store")
        return self._fault(k, array, "does not match its stored checksum")

    def read(self, k: int, raw: bool = False) -> CachedTargets:
        """View ``k``'s targets, one chunk per array: per level features and float16 masks ``(H_l, W_l)``.

        Features come back decoded (``(C, H_l, W_l)``: the storage dtype, float16 for the scaled encodings) and
        without scales; ``raw``: as the cache carries them (``(C', H_l, W_l)`` of ``encoding.torch_dtype``) with
        the scaled encodings' scales (``(C,)`` float32 per level), for ``encoding.decode`` later, e.g. on the GPU.

        Every array read is checked against the CRC-32 the writer stored for it (``check_view``): a view that
        does not decode, does not match its checksum, or holds a non-finite number raises CacheFormatError
        naming the view and the repair.
        """
        if not self.complete and not self.written[k]:  # an interrupted write: the view is absent, not damaged
            n = int(self.written.sum())
            raise self._fault(k, "the view", f"is not written yet: the cache is incomplete ({n} of {len(self)} "
                              "views written)", hint="run teacher-cache with --resume to finish it")
        name = self.buckets[int(self.bucket[k])].name
        arrays = self._memory[name] if self._memory is not None else self._bucket(name)
        row = int(self.row[k])
        feats, scales, masks = [], [], []
        try:
            stored_crcs = self._checksums(name, row)
        except CacheFormatError as exc:
            raise self._fault(k, "crc", f"is unreadable ({exc.message})") from exc
        for lv, (feat_arr, scale_arr, mask_arr) in enumerate(arrays):
            level = self.levels[lv].name
            try:
                stored = np.ascontiguousarray(feat_arr[row])
                scale = None if scale_arr is None else np.ascontiguousarray(scale_arr[row])
                mask = np.ascontiguousarray(mask_arr[row])
            except CacheFormatError as exc:  # the direct path: a shard index or file that does not fit
                raise self._fault(k, f"level {level}", f"is unreadable ({exc.message})") from exc
            except (ValueError, RuntimeError, OSError) as exc:  # a truncated shard, a codec failure, I/O
                raise self._fault(k, f"level {level}", f"is unreadable ({type(exc).__name__})") from exc
            check_view(self, k, level, stored, scale, mask, stored_crcs[2 * lv], stored_crcs[2 * lv + 1])
            scale = None if scale is None else torch.from_numpy(scale)
            feats.append(self.encoding.from_numpy(stored) if raw else self.encoding.decode(stored, scale))
            scales.append(scale)
            masks.append(torch.from_numpy(mask))
        return CachedTargets(feats, masks, scales if raw and self.encoding.scaled else None)

    @property
    def complete(self) -> bool:
        """Whether the writer finished (every view written)."""
        return self.attrs.get("state") == "complete"

    @property
    def written(self) -> np.ndarray:
        """(N,) bool: the views written (all of a complete cache; an incomplete one's ``done`` flags, read once)."""
        if self._written is None:
            self._written = np.ones(len(self), dtype=bool) if self.complete else self.done()
        return self._written

    def done(self) -> np.ndarray:
        """(N,) bool: which views are recorded as written."""
        flags = {b.name: self.backend.array(f"buckets/{b.name}/done")[...] for b in self.buckets}
        return np.array([bool(flags[self.buckets[int(b)].name][int(r)]) for b, r in zip(self.bucket, self.row)])

    def head_state_dict(self) -> dict[str, Tensor]:
        """The cached teacher head's weights, checked against their recorded checksums."""
        arrays = {name: arr[...] for name, arr in self.backend.arrays("teacher_head")}
        damaged = mismatched(self.attrs, {f"teacher_head/{name}": a for name, a in arrays.items()})
        if damaged:
            raise CacheFormatError(f"cache {self.path!r}: its teacher head does not match its checksums "
                                   f"({', '.join(damaged)}): the file is damaged",
                                   hint=repair_hint(self.path, self.backend.kind))
        return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}

    def build_head(self) -> torch.nn.Module:
        """The teacher's classification head with the cached weights, in eval mode."""
        from frs_cli.models import build_cls_head

        head = build_cls_head(self.teacher["head_spec"])
        head.load_state_dict(self.head_state_dict())
        return head.eval().requires_grad_(False)


def _array_name(arr) -> str:
    return getattr(arr, "path", None) or getattr(arr, "name", "?")


def check_view(cache: TeacherCache, k: int, level: str, feats: np.ndarray, scale: np.ndarray | None,
               mask: np.ndarray, feat_crc: int, mask_crc: int) -> None:
    """CacheFormatError naming view ``k`` unless its ``level`` arrays, as read, have the CRC-32s the writer
    stored (``view_crc``) and hold only finite numbers."""
    from frs_cli.cache.checksum import view_crc

    if view_crc(feats, scale) != int(feat_crc):
        raise cache._mismatch(k, f"{level}/features")
    if view_crc(mask) != int(mask_crc):
        raise cache._mismatch(k, f"{level}/mask")
    for array, ok in ((f"{level}/features", cache.encoding.finite(feats)),
                      (f"{level}/scale", scale is None or finite(scale)), (f"{level}/mask", finite(mask))):
        if not ok:
            raise cache._fault(k, array, "holds a non-finite number (NaN or inf), and its checksum matches: "
                               "the teacher wrote it", hint="check the teacher's weights (teacher-cache --check-teacher N), then "
                               "write the cache again to a new path")


class CachedViews(torch.utils.data.Dataset):
    """``CocoViews`` plus each view's cached teacher targets; indexed by ``(position, view)``."""

    def __init__(self, views: CocoViews, cache: TeacherCache):
        self.views = views
        self.cache = cache
        self.index = views.index

    def __len__(self) -> int:
        return len(self.views)

    def geometry_of(self, position: int, view: str) -> ViewGeometry:
        return self.views.geometry_of(position, view)

    def __getitem__(self, key) -> Sample:
        _position, view = key
        sample = self.views[key]
        k = self.cache.find(sample.image_id, view)
        cached = self.cache.view_geometry(k)
        if cached != sample.geometry:
            raise CacheMismatchError(f"cache {self.cache.path!r}: image {sample.image_id} {view} was cached with "
                                     f"geometry {cached.to_dict()}, the recipe gives {sample.geometry.to_dict()}")
        sample.teacher = self.cache.read(k, raw=True)  # decoded after the host-to-device copy (CachedTeacher)
        return sample


def attributes_error(path: str, kind: str, faults: list[str]) -> CacheFormatError:
    """The one line for a cache (of backend ``kind``) whose root attributes have ``faults`` (``attribute_faults``)."""
    return CacheFormatError(f"cache {path!r}: its attributes do not match its arrays ({faults_text(faults)}): they "
                            "were edited or damaged", hint=rewrite_hint(path, kind))


def refuse_edited(path: str, backend, attrs: dict) -> None:
    """CacheFormatError when the root attributes ``attrs``, of their kinds (``refuse_misshapen`` first), contradict
    the arrays of ``backend`` (``contradiction_faults``: an edited or damaged ``zarr.json``, which no checksum covers
    and ``--resume`` does not repair)."""
    faults = contradiction_faults(backend, attrs)
    if faults:
        raise attributes_error(path, backend.kind, faults)


def name_faults(backend, attrs: dict, missing: list[str]) -> list[str]:
    """Bucket and level names the root attributes give that the store holds no group of, while it holds groups of
    that kind under names they do not give: a name edited to another (``P3`` to ``Q3``, ``64x64`` to ``64x65``), whose
    arrays read as missing and which ``--resume`` would have "repaired" by writing every view anew under the edited
    name. One phrase per kind of name (empty: none). ``missing``: the required arrays the store lacks; only when some
    lie below ``buckets/`` is the store listed, its ``buckets`` group once, then each bucket it holds that lacks level
    arrays, until one shows a level fault: an intact cache costs nothing. A group deleted whole (no other in its
    place: ``--resume`` recreates it) and a deleted shard file (its array is there) are no such fault; nor is a cache
    being created (``state`` creating), which every reader stops at before. The attributes are of their kinds."""
    gone = [n.split("/") for n in missing if n.startswith("buckets/")]
    if not gone:
        return []
    held = backend.groups_in("buckets")
    faults = _renamed("bucket", "buckets", [b["name"] for b in attrs["buckets"]], held, "the store")
    levels = [lv["name"] for lv in attrs["levels"]]
    lacking = dict.fromkeys(p[1] for p in gone if len(p) == 4 and p[1] in held)  # held buckets lacking level arrays
    for bucket in [] if faults else lacking:
        faults = _renamed("level", "levels", levels, backend.groups_in(f"buckets/{bucket}"), f"buckets/{bucket}")
        if faults:
            break
    return faults


def _renamed(what: str, key: str, named: list[str], held: set[str], holder: str) -> list[str]:
    """The fault of ``named`` (the attributes' names of ``what`` at ``key``) where ``holder`` holds no group of some
    and holds groups ``held`` under names not among them."""
    absent = [(i, n) for i, n in enumerate(named) if n not in held]
    unnamed = sorted(held - set(named))
    if not absent or not unnamed:
        return []
    keys, names = _few([f"{key}[{i}].name" for i, _ in absent]), _few([n for _, n in absent])
    says = f"{keys} names {what} {names}" if len(absent) == 1 else f"{keys} name {what}s {names}"
    holds = f"{what}{'' if len(unnamed) == 1 else 's'} {_few(unnamed)}"
    return [f"{says}, which {holder} does not hold; it holds {holds}, which the attributes do not name"]


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def refuse_renamed(path: str, backend, attrs: dict, missing: list[str]) -> None:
    """CacheFormatError when a bucket or level name in the root attributes ``attrs`` was edited to another
    (``name_faults``; ``missing``: the required arrays the store lacks). Its arrays are not missing but stored under
    the old name, so no repair of missing arrays may follow."""
    faults = name_faults(backend, attrs, missing)
    if faults:
        raise attributes_error(path, backend.kind, faults)


_OBJECT_ATTRIBUTES = ("teacher", "dataset", "geometry", "storage", "fingerprints")
_LIST_ATTRIBUTES = ("levels", "buckets", "views")
_NO_KEY = object()  # a key that is not there (an attribute's, an entry's): named "no such key", where a null is "none"


def _kind(value) -> str:
    return "no such key" if value is _NO_KEY else "none" if value is None else type(value).__name__


def _got(value) -> str:
    """What arrived, as a fault names it: its kind, and a scalar's value (a long one cut, with an ellipsis)."""
    shown = "" if value is None or value is _NO_KEY or isinstance(value, (dict, list)) else f" {value!r}"
    return _kind(value) + (shown if len(shown) <= 41 else shown[:40] + "…")


def attribute_kind_faults(attrs: dict) -> list[str]:
    """The root attributes every reader looks into that are not of their kind (an object, a list), a teacher head
    spec that is no object, and the numbers readers take as counts and sizes that are no integers
    (``_value_faults``): one short phrase each. Checked before any of them is read, so that an edited
    ``zarr.json`` is one line, not a traceback from whichever command reads it first."""
    faults = [f"{k}: expected an object, got {_kind(attrs.get(k, _NO_KEY))}" for k in _OBJECT_ATTRIBUTES
              if not isinstance(attrs.get(k), dict)]
    faults += [f"{k}: expected a list, got {_kind(attrs.get(k, _NO_KEY))}" for k in _LIST_ATTRIBUTES
               if not isinstance(attrs.get(k), list)]
    spec = attrs["teacher"].get("head_spec", _NO_KEY) if isinstance(attrs.get("teacher"), dict) else {}
    if not isinstance(spec, dict):
        faults.append(f"teacher.head_spec: expected an object, got {_kind(spec)}")
    return faults or _value_faults(attrs)


def _value_faults(attrs: dict) -> list[str]:
    """The counts and sizes readers take with ``int()`` or compute with, where they are no integers of their range
    (a string ``"45"`` passed ``int()`` unnoticed, ``"x"`` was a traceback): ``num_views``, each level's stride and
    channels, each bucket's count, padded size and level sizes (one per level), and the teacher head's
    ``cls_channels`` (caches written before other families existed have none). Also the names array paths are made
    of (each level's and bucket's) and each of ``views``, where they are no strings, the geometry
    (``_geometry_faults``) and ``storage`` (``_storage_faults``). ``attrs`` are of their kinds otherwise."""
    numbers = [("num_views", attrs.get("num_views", _NO_KEY), 0)]
    spec = attrs["teacher"]["head_spec"]
    if "cls_channels" in spec:
        numbers.append(("teacher.head_spec.cls_channels", spec["cls_channels"], 1))
    faults = [fault for i, view in enumerate(attrs["views"]) for fault in _name_faults(f"views[{i}]", view)]
    for i, lv in enumerate(attrs["levels"]):
        if not isinstance(lv, dict):
            faults.append(f"levels[{i}]: expected an object, got {_kind(lv)}")
            continue
        faults += _name_faults(f"levels[{i}].name", lv.get("name", _NO_KEY))
        numbers += [(f"levels[{i}].{k}", lv.get(k, _NO_KEY), 1) for k in ("stride", "channels")]
    for i, b in enumerate(attrs["buckets"]):
        if not isinstance(b, dict):
            faults.append(f"buckets[{i}]: expected an object, got {_kind(b)}")
            continue
        faults += _name_faults(f"buckets[{i}].name", b.get("name", _NO_KEY))
        numbers.append((f"buckets[{i}].count", b.get("count", _NO_KEY), 0))
        faults += _pair_faults(f"buckets[{i}].padded", b.get("padded", _NO_KEY), numbers)
        faults += _level_sizes_faults(f"buckets[{i}].level_sizes", b.get("level_sizes", _NO_KEY), len(attrs["levels"]),
                                      numbers)
    faults += _geometry_faults(attrs["geometry"], numbers)
    faults += _storage_faults(attrs["storage"])
    for key, value, least in numbers:
        if isinstance(value, bool) or not isinstance(value, int):
            faults.append(f"{key}: expected {_RANGE[least]}, got {_got(value)}")
        elif value < least:
            faults.append(f"{key}: expected {_RANGE[least]}, got {value}")
    return faults


_RANGE = {0: "an integer >= 0", 1: "a positive integer"}


def _name_faults(key: str, name) -> list[str]:
    """The fault of a ``name`` (at ``key``: a level's, a bucket's, a view's) where it is no string."""
    return [] if isinstance(name, str) else [f"{key}: expected a string, got {_got(name)}"]


def _geometry_faults(geometry: dict, numbers: list) -> list[str]:
    """The faults of the ``geometry`` attribute readers build a ``GeometryConfig`` of: a key it has no field for (a
    ``TypeError`` traceback), a ``max_size`` below ``min_size`` (its refusal named a recipe key); its sizes join
    ``numbers`` (a key left out reads as the field's default, which the views' recorded geometry then contradicts)."""
    known = [f.name for f in dataclasses.fields(GeometryConfig)]
    numbers += [(f"geometry.{k}", geometry[k], 1) for k in known if k in geometry]
    faults = [f"geometry.{k}: expected no such key (a geometry holds {', '.join(known)}), got {_got(v)}"
              for k, v in geometry.items() if k not in known]
    low, high = geometry.get("min_size"), geometry.get("max_size")
    if type(low) is int and type(high) is int and high < low:
        faults.append(f"geometry.max_size: expected at least min_size ({low}), got {high}")
    return faults


def _storage_faults(storage: dict) -> list[str]:
    """The faults of the ``storage`` attribute: a ``dtype`` that names no encoding (``NAMES``: every reader decodes the
    features by it; a number was refused in words naming no cache, a deleted one was a ``KeyError`` traceback), a
    ``codec`` that names no compressor frs writes (``CODECS``: readers take the codec from the arrays, but
    ``cache info`` shows it, ``teacher-cache`` compares it with the recipe's and ``distill`` records it; older caches
    have none, read as ``none``), and a ``mask_dtype`` that names no dtype (older caches: none, ``float16``)."""
    faults = [f"storage.{key}: expected one of {', '.join(names)}, got {_got(value)}"
              for key, value, names in (("dtype", storage.get("dtype", _NO_KEY), NAMES),
                                        ("codec", storage.get("codec", "none"), CODECS))
              if not (isinstance(value, str) and value in names)]
    return faults + _mask_dtype_faults(storage.get("mask_dtype", "float16"))


def _mask_dtype_faults(name) -> list[str]:
    """The fault of ``storage.mask_dtype`` where NumPy reads no dtype of it (``attribute_faults`` compares the masks'
    dtype with it: a ``TypeError`` traceback)."""
    if isinstance(name, str):
        try:
            np.dtype(name)
            return []
        except TypeError:
            pass
    return [f"storage.mask_dtype: expected a NumPy dtype name (float16), got {_got(name)}"]


def _pair_faults(key: str, value, numbers: list) -> list[str]:
    """The fault of ``value`` (at ``key``) where it is no list of two; else its entries join ``numbers`` as sizes."""
    if isinstance(value, list) and len(value) == 2:
        numbers += [(f"{key}[{j}]", v, 1) for j, v in enumerate(value)]
        return []
    got = f"a list of {len(value)}" if isinstance(value, list) else _kind(value)
    return [f"{key}: expected a list of two integers, got {got}"]


def _level_sizes_faults(key: str, sizes, levels: int, numbers: list) -> list[str]:
    """The faults of a bucket's ``level_sizes`` (at ``key``), where it is no list of one grid size per level (readers
    zip them with the levels); its sizes join ``numbers``."""
    if not isinstance(sizes, list) or len(sizes) != levels:
        got = f"a list of {len(sizes)}" if isinstance(sizes, list) else _kind(sizes)
        return [f"{key}: expected a list of {levels} [height, width] sizes (one per level), got {got}"]
    return [fault for j, size in enumerate(sizes) for fault in _pair_faults(f"{key}[{j}]", size, numbers)]


def refuse_misshapen(path: str, backend, attrs: dict) -> None:
    """CacheFormatError when root attributes are not of their kind (``attribute_kind_faults``)."""
    faults = attribute_kind_faults(attrs)
    if faults:
        raise attributes_error(path, backend.kind, faults)


def faults_text(faults: list[str]) -> str:
    """The first of ``attribute_faults`` and how many more."""
    return faults[0] + (f"; {plural(len(faults) - 1, 'more fault')}" if len(faults) > 1 else "")


def rewrite_hint(path: str, kind: str) -> str:
    """What mends a cache whose attributes were edited or damaged (``--resume`` does not)."""
    return (f"export it again from the Zarr cache (frs cache export ZARR {path})" if kind == "hdf5" else
            "write the cache again (frs teacher-cache into a new --out)")


def _class_and_image_faults(attrs: dict, image_ids: np.ndarray) -> list[str]:
    """The class and image counts the attributes record against each other and the index: no array holds them,
    but readers build the student's labels from ``dataset.label_to_category``. The attributes are of their kinds
    (``attribute_kind_faults``)."""
    teacher, dataset = attrs["teacher"], attrs["dataset"]
    labels, num_classes = dataset.get("label_to_category"), teacher.get("num_classes")
    faults = []
    if not (isinstance(labels, list) and labels and all(isinstance(c, int) and c >= 0 for c in labels)
            and labels == sorted(set(labels))):
        faults.append(f"dataset.label_to_category {labels!r} is no increasing list of category ids")
    elif num_classes != len(labels):
        faults.append(f"teacher.num_classes {num_classes!r} against {len(labels)} classes in dataset.label_to_category")
    spec = teacher["head_spec"]
    spec_classes = spec.get("num_classes", num_classes)
    if spec_classes != num_classes:
        faults.append(f"teacher.num_classes {num_classes!r} against {spec_classes!r} in teacher.head_spec")
    faults += _cls_channels_faults(spec, spec_classes)
    images = len(np.unique(image_ids))
    if "num_images" not in dataset:  # every writer records it
        faults.append(f"dataset.num_images: expected {images} (the images in the index), got no such key")
    elif dataset["num_images"] != images:
        faults.append(f"dataset.num_images {dataset['num_images']!r} against {images} images in the index")
    return faults


def _cls_channels_faults(spec: dict, num_classes) -> list[str]:
    """``cls_channels`` of a teacher ``head_spec`` against what its family's head gives (``FamilySpec.cls_channels``:
    anchors x classes, or anchors alone for an objectness head). Readers take the teacher's signature from it, and
    the head is rebuilt from the other keys, so an edited value would name a head the cache does not hold."""
    family = FAMILIES.get(spec.get("family"))
    if family is None or "cls_channels" not in spec:  # an unknown family is named where the head is rebuilt
        return []
    anchors = spec.get("num_anchors", family.anchors)
    if not isinstance(anchors, int) or not isinstance(num_classes, int):
        return []  # named as the attributes of the wrong kind, or against the classes, elsewhere
    expected = dataclasses.replace(family, anchors=anchors).cls_channels(num_classes)
    if spec["cls_channels"] == expected:
        return []
    of = f"{anchors} anchors x {num_classes} classes" if family.per_anchor == "classes" else f"{anchors} anchors"
    return [(f"teacher.head_spec.cls_channels {spec['cls_channels']!r} against {expected} ({of}, the "
             f"{spec['family']} head's classification output)")]


def read_index(backend) -> dict[str, np.ndarray]:
    """The index arrays of a cache's store (``backend``), read whole, by name (``INDEX_ARRAYS``)."""
    return {n: np.asarray(backend.array(f"index/{n}")[...]) for n in INDEX_ARRAYS}


def attribute_faults(backend, attrs: dict) -> list[str]:
    """What in the root attributes is not of its kind (``attribute_kind_faults``) or disagrees with the arrays they
    describe (``contradiction_faults``), one short phrase each (empty: all agree)."""
    return attribute_kind_faults(attrs) or contradiction_faults(backend, attrs)


def contradiction_faults(backend, attrs: dict, index: dict[str, np.ndarray] | None = None) -> list[str]:
    """What in the root attributes ``attrs``, of their kinds (``attribute_kind_faults``), disagrees with the arrays
    they describe, one short phrase each (empty: all agree). The attributes tell readers how to decode and place
    every view, and no checksum covers them, so an edited or damaged ``zarr.json`` is found here: the storage dtype
    against the features' stored channels and dtype, the levels' channels and grids against each array's shape, the
    bucket counts and rows against the index, each view's recorded geometry against the geometry attributes, the
    teacher head against its ``head_spec``. ``index``: the index arrays (``read_index``), where the caller has read
    them already."""
    from frs_cli.data.geometry import level_grid_size, view_geometry
    from frs_cli.errors import ConfigError
    from frs_cli.models import build_cls_head

    faults: list[str] = []
    encoding = FeatureEncoding(attrs["storage"]["dtype"])  # one of its names (_storage_faults)
    index = read_index(backend) if index is None else index
    if int(attrs.get("num_views", -1)) != len(index["image_id"]):
        faults.append(f"num_views {attrs.get('num_views')} against {len(index['image_id'])} views in the index")
    faults += _class_and_image_faults(attrs, index["image_id"])
    levels, buckets, views = attrs["levels"], attrs["buckets"], list(attrs["views"])
    mask_dtype = np.dtype(attrs["storage"].get("mask_dtype", "float16"))
    for i, b in enumerate(buckets):
        name, count = b["name"], int(b["count"])
        rows = np.sort(index["row"][index["bucket"] == i])
        if len(rows) != count or not np.array_equal(rows, np.arange(count)):
            faults.append(f"bucket {name}: count {count} against {len(rows)} views of it in the index")
        padded = tuple(b["padded"])
        if name != f"{padded[0]}x{padded[1]}":
            faults.append(f"bucket {name}: padded size {list(padded)}")
        for lv, size in zip(levels, b["level_sizes"], strict=True):
            grid = level_grid_size(padded, round(np.log2(int(lv["stride"]))))
            if tuple(size) != grid:
                faults.append(f"bucket {name} {lv['name']}: level_sizes {list(size)}, stride {lv['stride']} of "
                              f"{padded[0]}x{padded[1]} gives {list(grid)}")
                continue
            try:
                channels = encoding.stored_channels(int(lv["channels"]))
            except CacheFormatError as exc:
                faults.append(f"{lv['name']}: {exc.message}")
                continue
            expected = {"features": ((count, channels, *grid), encoding.numpy_dtype),
                        "mask": ((count, *grid), mask_dtype)}
            if encoding.scaled:
                expected["scale"] = ((count, int(lv["channels"])), np.dtype(np.float32))
            for kind, (shape, dtype) in expected.items():
                path = f"buckets/{name}/{lv['name']}/{kind}"
                if not backend.has(path):
                    continue  # named as missing elsewhere
                arr = backend.array(path)
                if tuple(arr.shape) != shape or np.dtype(arr.dtype) != dtype:
                    faults.append(f"{path} is {tuple(arr.shape)} {np.dtype(arr.dtype)}, the attributes say {shape} "
                                  f"{dtype} (storage.dtype {encoding.name!r}, {lv['name']} channels {lv['channels']})")
    try:
        geometry = GeometryConfig(**attrs["geometry"])
    except (ConfigError, TypeError) as exc:
        return [*faults, f"geometry: {exc}"]
    wrong = 0
    for k, g in enumerate(index["geometry"].tolist()):
        code, b = int(index["view"][k]), int(index["bucket"][k])
        name = view_name(code, views)
        try:
            expected = view_geometry(g[0], g[1], geometry, name).to_row()
        except ConfigError:
            expected = None
        if expected is None or list(expected) != g or not 0 <= b < len(buckets) or list(buckets[b]["padded"]) != g[4:6]:
            wrong += 1
    if wrong:
        faults.append(f"{wrong} of {len(index['geometry'])} views' recorded geometry does not follow from the geometry "
                      f"{dict(attrs['geometry'])} and views {views}")
    try:
        head = build_cls_head(attrs["teacher"]["head_spec"]).state_dict()
    except Exception as exc:  # noqa: BLE001 - any spec the builder refuses is a fault of the attribute
        return [*faults, f"teacher.head_spec: {type(exc).__name__}: {str(exc)[:80]}"]
    for n, t in head.items():
        path = f"teacher_head/{n}"
        if backend.has(path) and tuple(backend.array(path).shape) != tuple(t.shape):
            faults.append(f"{path} is {tuple(backend.array(path).shape)}, teacher.head_spec gives {tuple(t.shape)}")
    return faults
