"""Feature encodings of the cache (``cache.encoding.FeatureEncoding``): every dtype's stored form, int8 and the
packed int6/int5/int4, decoded after the host-to-device copy; and that no other module reinterprets bfloat16."""

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import first_batch_features, write_recipe
from typer.testing import CliRunner

from frs_cli.cache.encoding import NAMES, FeatureEncoding, finite
from frs_cli.cache.reader import CachedViews, TeacherCache
from frs_cli.cache.shard_writer import view_crc
from frs_cli.cache.verify import verify_cache
from frs_cli.cache.writer import write_teacher_cache
from frs_cli.cli.app import app
from frs_cli.config import load_recipe
from frs_cli.data.coco import CocoViews, collate
from frs_cli.data.targets import CachedTargets
from frs_cli.dist import setup
from frs_cli.errors import CacheFormatError
from frs_cli.train.objectives import CachedTeacher

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
BITS = {"int8": 8, "int6": 6, "int5": 5, "int4": 4}
ALL = ("float16", "bfloat16", "float32", "int8", "int6", "int5", "int4")


def _features(seed: int = 0) -> torch.Tensor:
    """(2, 16, 5, 7) fp32 with channel ranges from 0.01 to 10 and channel 3 all zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 5, 7, generator=g) * torch.logspace(-2, 1, 16).view(1, 16, 1, 1)
    x[:, 3] = 0
    return x


def test_each_dtype_names_its_stored_and_carried_form():
    got = {}
    for d in ALL:
        e = FeatureEncoding(d)
        got[d] = (e.numpy_dtype, e.torch_dtype, e.bits, e.scaled, e.packed, e.format_version)
    assert got == {
        "float16": (np.dtype(np.float16), torch.float16, 16, False, False, 1),
        "bfloat16": (np.dtype(np.uint16), torch.bfloat16, 16, False, False, 1),
        "float32": (np.dtype(np.float32), torch.float32, 32, False, False, 1),
        "int8": (np.dtype(np.int8), torch.int8, 8, True, False, 1),
        "int6": (np.dtype(np.uint8), torch.uint8, 6, True, True, 2),
        "int5": (np.dtype(np.uint8), torch.uint8, 5, True, True, 2),
        "int4": (np.dtype(np.uint8), torch.uint8, 4, True, True, 2),
    }
    assert NAMES == ALL
    enc = FeatureEncoding("int5")  # DataLoader workers get it pickled, inside the TeacherCache
    assert pickle.loads(pickle.dumps(enc)) == enc and FeatureEncoding("int5") == enc != FeatureEncoding("int4")


def test_the_recipe_offers_exactly_the_encodings_there_are():
    from typing import get_args, get_type_hints

    from frs_cli.cache.config import CacheConfig

    assert get_args(get_type_hints(CacheConfig)["dtype"]) == NAMES


def test_an_unknown_dtype_is_refused_in_one_line():
    with pytest.raises(CacheFormatError, match="^cache dtype: expected one of float16, bfloat16, float32, int8, int6, "
                                               "int5, int4, got 'int3'$"):
        FeatureEncoding("int3")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_float_dtypes_round_trip_as_the_dtype_itself(dtype):
    enc = FeatureEncoding(dtype)
    x = _features(4)
    data, scale = enc.encode(x)
    assert scale is None and data.dtype == enc.torch_dtype and data.shape == x.shape and data.is_contiguous()
    assert torch.equal(data, x.to(enc.torch_dtype))
    stored = enc.to_numpy(data)
    assert stored.dtype == enc.numpy_dtype and stored.shape == x.shape
    back = enc.from_numpy(stored)
    assert back.dtype == enc.torch_dtype and torch.equal(back, data)
    assert torch.equal(enc.decode(data), data) and torch.equal(enc.decode(stored), data)


def test_bfloat16_is_stored_as_its_bit_pattern():
    enc = FeatureEncoding("bfloat16")
    # 1 = 0x3F80, -2 = 0xC000, 0.15625 = 1.25 * 2**-3 = 0x3E20, 3 = 0x4040; 1 + 2**-9 rounds to 1 (half to even)
    data, _ = enc.encode(torch.tensor([1.0, -2.0, 0.15625, 3.0, 1 + 2**-9]).view(1, 5, 1, 1))
    stored = enc.to_numpy(data)
    assert stored.dtype == np.uint16 and stored.ravel().tolist() == [0x3F80, 0xC000, 0x3E20, 0x4040, 0x3F80]
    assert enc.decode(stored).ravel().tolist() == [1.0, -2.0, 0.15625, 3.0, 1.0]
    stored[0, 1, 0, 0] = 0x4000  # carried and stored share memory: the writer hands zarr the tensor's own bytes
    assert data[0, 1, 0, 0].item() == 2.0


@pytest.mark.parametrize("dtype", ["int8", "int6", "int5", "int4"])
def test_scaled_dtypes_round_trip_within_half_a_step_per_channel(dtype):
    enc = FeatureEncoding(dtype)
    bits = BITS[dtype]
    qmax = 2 ** (bits - 1) - 1
    x = _features()
    data, scale = enc.encode(x)
    assert data.shape == (2, 16 * bits // 8, 5, 7) and data.is_contiguous()
    assert data.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert scale.shape == (2, 16) and scale.dtype == torch.float32
    expected = x.abs().amax(dim=(-2, -1)) * (1.0 / qmax)  # max|x| / qmax, to the bit on CPU and CUDA
    expected[:, 3] = 1  # an all-zero channel gets scale 1
    torch.testing.assert_close(scale, expected, rtol=0, atol=0)
    y = enc.decode(data, scale)
    assert y.shape == x.shape and y.dtype == torch.float16
    err = (y.float() - x).abs()
    # half a quantisation step, plus the float16 rounding of the result (2**-11 relative)
    assert (err <= scale[..., None, None] / 2 + x.abs() * 2**-11 + 1e-7).all()
    assert (y[:, 3] == 0).all()
    codes = torch.round(y.float() / scale[..., None, None])
    assert codes.abs().amax(dim=(-2, -1))[:, [0, 1, 2, 4]].eq(qmax).all()  # each channel's max maps to +-qmax
    stored = enc.to_numpy(data)
    assert stored.dtype == enc.numpy_dtype and torch.equal(enc.decode(stored, scale.numpy()), y)


def _codes_at_scale_one(codes: list[int], qmax: int, groups: int = 1) -> torch.Tensor:
    """(1, 8 * groups, 1, 2) features: position 0 holds qmax in every channel (so every scale is 1 and a code
    is its value), position 1 the codes in the last group of 8 channels, zeros before."""
    x = torch.zeros(1, 8 * groups, 1, 2)
    x[0, :, 0, 0] = float(qmax)
    x[0, 8 * (groups - 1) :, 0, 1] = torch.tensor(codes, dtype=torch.float32)
    return x


def test_int5_packs_eight_channels_of_a_position_into_the_bytes_computed_by_hand():
    enc = FeatureEncoding("int5")
    codes = [1, -1, 15, -15, 0, 7, -8, 3]
    data, scale = enc.encode(_codes_at_scale_one(codes, 15))
    assert torch.equal(scale, torch.ones(1, 8))
    # 5-bit two's complement: 1, 31, 15, 17, 0, 7, 24, 3 at bits 0, 5, ..., 35 of a little-endian integer
    word = sum((c & 31) << (5 * i) for i, c in enumerate(codes))
    assert list(word.to_bytes(5, "little")) == [225, 191, 8, 14, 30]
    assert data[0, :, 0, 1].tolist() == [225, 191, 8, 14, 30]
    assert data[0, :, 0, 0].tolist() == list(sum(15 << (5 * i) for i in range(8)).to_bytes(5, "little"))
    assert enc.decode(data, scale)[0, :, 0, 1].tolist() == codes


def test_int6_packs_eight_channels_into_six_bytes_computed_by_hand():
    # 6-bit two's complement 1, 63, 31, 33, 0, 7, 56, 3 at bits 0, 6, ..., 42: byte 0 = 1 | (63 & 3) << 6 = 193,
    # byte 1 = 63 >> 2 | (31 & 15) << 4 = 255, byte 2 = 31 >> 4 | 33 << 2 = 133, byte 3 = 0 | (7 & 3) << 6 = 192,
    # byte 4 = 7 >> 2 | (56 & 15) << 4 = 129, byte 5 = 56 >> 4 | 3 << 2 = 15
    enc = FeatureEncoding("int6")
    codes = [1, -1, 31, -31, 0, 7, -8, 3]
    data, scale = enc.encode(_codes_at_scale_one(codes, 31))
    assert data.dtype == torch.uint8 and data.shape == (1, 6, 1, 2) and torch.equal(scale, torch.ones(1, 8))
    assert data[0, :, 0, 1].tolist() == [193, 255, 133, 192, 129, 15]
    assert enc.to_numpy(data)[0, :, 0, 1].tobytes() == bytes([193, 255, 133, 192, 129, 15])
    assert enc.unpack(data)[0, :, 0, 1].tolist() == codes


def test_int4_packs_two_channels_a_byte_group_after_group():
    # 4-bit two's complement 1, 15, 7, 9, 0, 5, 10, 3: byte k = code 2k | code 2k+1 << 4; the second group of
    # 8 channels goes to bytes 4..7, after the first group's (zero codes) bytes 0..3
    enc = FeatureEncoding("int4")
    codes = [1, -1, 7, -7, 0, 5, -6, 3]
    data, scale = enc.encode(_codes_at_scale_one(codes, 7, groups=2))
    assert data.shape == (1, 8, 1, 2) and torch.equal(scale, torch.ones(1, 16))
    assert data[0, :, 0, 1].tolist() == [0, 0, 0, 0, 241, 151, 80, 58]
    assert data[0, :, 0, 0].tolist() == [7 | 7 << 4] * 8
    assert enc.decode(data, scale)[0, 8:, 0, 1].tolist() == codes
    # pack takes the whole 4-bit range: -8 = 8, 7; 0, -1 = 15; 1, 2; 3, 4
    q = torch.tensor([-8, 7, 0, -1, 1, 2, 3, 4], dtype=torch.int8).view(1, 8, 1, 1)
    assert enc.pack(q).ravel().tolist() == [0x78, 0xF0, 0x21, 0x43] and torch.equal(enc.unpack(enc.pack(q)), q)


@pytest.mark.parametrize("dtype", ["int6", "int5", "int4"])
def test_zero_bytes_decode_to_zero(dtype):
    zeros = torch.zeros(3, 2 * BITS[dtype], 4, 4, dtype=torch.uint8)  # what collate pads with
    y = FeatureEncoding(dtype).decode(zeros, torch.full((3, 16), 2.5))
    assert y.shape == (3, 16, 4, 4) and torch.equal(y, torch.zeros(3, 16, 4, 4, dtype=torch.float16))


def test_packed_dtypes_need_a_multiple_of_8_channels():
    assert [FeatureEncoding(d).stored_channels(256) for d in ALL] == [256, 256, 256, 256, 192, 160, 128]
    assert FeatureEncoding("int5").stored_channels(64) == 40 and FeatureEncoding("int8").stored_channels(12) == 12
    with pytest.raises(CacheFormatError, match="^cache dtype int5: packs 8 channels at a time, the teacher's 60 "
                                               "channels are not a multiple of 8$"):
        FeatureEncoding("int5").stored_channels(60)
    with pytest.raises(CacheFormatError, match="cache dtype int4: .* 12 channels are not a multiple of 8"):
        FeatureEncoding("int4").encode(torch.ones(1, 12, 2, 2))
    with pytest.raises(CacheFormatError, match="^cache unpack: expected a multiple of 5 bytes per position, got 7$"):
        FeatureEncoding("int5").unpack(torch.zeros(1, 7, 2, 2, dtype=torch.uint8))
    with pytest.raises(CacheFormatError, match="^cache pack: expected a packed encoding .*, got int8$"):
        FeatureEncoding("int8").pack(torch.zeros(1, 8, 2, 2, dtype=torch.int8))


@pytest.mark.parametrize("dtype", ALL)
def test_decode_of_a_batch_equals_decode_of_each_view_and_numpy_equals_tensor(dtype):
    enc = FeatureEncoding(dtype)
    data, scale = enc.encode(_features(1))
    batch = enc.decode(data, scale)
    from_numpy = enc.decode(enc.to_numpy(data), None if scale is None else scale.numpy())
    assert batch.dtype == from_numpy.dtype and torch.equal(batch, from_numpy)
    for i in range(2):
        view = enc.decode(data[i], None if scale is None else scale[i])
        assert view.dtype == batch.dtype and torch.equal(view, batch[i])
        view_np = enc.decode(enc.to_numpy(data[i]), None if scale is None else scale[i].numpy())
        assert torch.equal(view_np, batch[i])


@pytest.mark.parametrize("dtype", ["int8", "int6", "int5", "int4"])
def test_decode_rounds_each_code_times_its_scale_once_as_the_float32_product_does(dtype):
    """decode multiplies codes by scales straight into float16: the bits of ``(codes.float() * scale).half()``,
    over every code and 256 scales whose products land between float16 neighbours."""
    enc = FeatureEncoding(dtype)
    qmax = 2 ** (enc.bits - 1) - 1
    g = torch.Generator().manual_seed(3)
    codes = torch.arange(-qmax, qmax + 1, dtype=torch.int8).repeat(256 * 3).view(3, 256, 2 * qmax + 1, 1)
    data = enc.pack(codes) if enc.packed else codes
    scale = torch.rand(3, 256, generator=g) * 0.37 + 1e-3
    y = enc.decode(data, scale)
    want = (codes.float() * scale[..., None, None]).half()
    assert y.dtype == torch.float16 and y.shape == codes.shape and torch.equal(y, want)


def test_old_encodings_store_and_decode_as_before():
    x = _features(2)
    for dtype, stored in (("float16", np.float16), ("float32", np.float32), ("bfloat16", np.uint16)):
        enc = FeatureEncoding(dtype)
        data, scale = enc.encode(x)
        assert scale is None and enc.to_numpy(data).dtype == stored and data.shape == x.shape
        assert torch.equal(enc.decode(data), x.to(getattr(torch, dtype)))
    enc = FeatureEncoding("int8")
    data, scale = enc.encode(x)
    q = torch.round(x / scale[..., None, None]).clamp(-127, 127)
    assert torch.equal(data, q.to(torch.int8))
    assert torch.equal(enc.decode(data.numpy(), scale.numpy()), (q * scale[..., None, None]).half())


def test_decode_refuses_features_of_another_dtype_and_scales_that_do_not_fit():
    enc = FeatureEncoding("int5")
    data, scale = enc.encode(_features())
    with pytest.raises(CacheFormatError, match="^cache decode: int5 features are carried as torch.uint8, got "
                                               "torch.float16$"):
        enc.decode(data.half(), scale)
    with pytest.raises(CacheFormatError, match="^cache read: int5 features are stored as uint8, got int8$"):
        enc.decode(data.numpy().view(np.int8), scale)
    with pytest.raises(CacheFormatError, match="^cache decode: int5 features need their per-channel scales, got none$"):
        enc.decode(data)
    with pytest.raises(CacheFormatError, match="^cache decode: float16 features take no per-channel scales, got some$"):
        FeatureEncoding("float16").decode(torch.zeros(2, 16, 5, 7, dtype=torch.float16), scale)
    with pytest.raises(CacheFormatError, match="^cache store: bfloat16 features are carried as torch.bfloat16, got "
                                               "torch.float16$"):
        FeatureEncoding("bfloat16").to_numpy(torch.zeros(2, dtype=torch.float16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_finite_reads_the_stored_bits(dtype):
    enc = FeatureEncoding(dtype)
    big = {"float16": 65504.0, "bfloat16": 3.3895e38, "float32": 3.4028e38}[dtype]  # about the largest finite value
    data, _ = enc.encode(torch.tensor([0.0, -big, big, 1.5]).view(1, 4, 1, 1))
    assert torch.isfinite(data.float()).all() and enc.finite(enc.to_numpy(data))
    for bad in (float("inf"), float("-inf"), float("nan")):
        data, _ = enc.encode(torch.tensor([0.0, bad, 1.5, 2.0]).view(1, 4, 1, 1))
        assert not enc.finite(enc.to_numpy(data)), bad
    assert FeatureEncoding("int5").finite(np.full((5, 2, 2), 255, dtype=np.uint8))  # codes are always finite
    assert finite(np.array([1.0, 65504.0], dtype=np.float16)) and not finite(np.array([1.0, np.inf], dtype=np.float16))
    assert finite(np.zeros((0, 3), dtype=np.float32)) and not finite(np.array([np.nan], dtype=np.float32))


# -- bfloat16's bits are reinterpreted in one module --------------------------------------------------------------
# 16-bit integer dtype names (bfloat16's stored form), spelt as bytes so that this file's str constants do not match
_INT16_NAMES = {b"int16", b"uint16", b"short", b"ushort", b"u2", b"<u2", b">u2", b"i2", b"<i2", b">i2"}
ENCODING, ITS_TESTS = "frs_cli/cache/encoding.py", "tests/test_encodings.py"


def _is_int16(node) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr.encode() in _INT16_NAMES
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.encode() in _INT16_NAMES


def _scan(source: str) -> tuple[list[int], list[int]]:
    """Lines of ``source`` that (1) name a 16-bit integer dtype, (2) view or read bytes as one or as bfloat16:
    a reinterpretation. Comments and docstrings may speak of them."""
    names, views = [], []
    for node in ast.walk(ast.parse(source)):
        if _is_int16(node):
            names.append(node.lineno)
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and func.attr in ("view", "frombuffer"):
            args = [*node.args, *(k.value for k in node.keywords)]
            if any(_is_int16(a) or (isinstance(a, ast.Attribute) and a.attr == "bfloat16") for a in args):
                views.append(node.lineno)
    return sorted(names), sorted(views)


def test_only_the_encoding_module_reinterprets_bfloat16():
    """No module but cache/encoding.py names bfloat16's stored dtype or reinterprets bits to or from bfloat16;
    the encoding's own tests may name the stored dtype to check it, but reinterpret nothing themselves."""
    sources = sorted(p for d in ("frs_cli", "bench", "tests") for p in (ROOT / d).rglob("*.py"))
    assert len(sources) > 100 and ROOT / "frs_cli" / "cache" / "writer.py" in sources
    scans = {str(p.relative_to(ROOT)): _scan(p.read_text()) for p in sources}
    names = {f: n for f, (n, _) in scans.items() if n and f not in (ENCODING, ITS_TESTS)}
    views = {f: v for f, (_, v) in scans.items() if v and f != ENCODING}
    assert names == {} and views == {}, (names, views)  # ask FeatureEncoding (to_numpy, from_numpy, decode)
    assert len(scans[ENCODING][0]) >= 3 and len(scans[ENCODING][1]) == 2  # the scan sees the real ones: both ways


def test_the_reinterpretation_scan_sees_each_way_of_doing_it():
    for line in ("t.view(torch.uint16)", "a.view(np.int16)", "a.view('<u2')", "x.view(dtype=torch.bfloat16)",
                 "torch.frombuffer(b, dtype=torch.bfloat16)", "torch.frombuffer(b, dtype=torch.int16)"):
        assert _scan(line)[1] == [1], line
    assert _scan("np.zeros(3, dtype='uint16')") == ([1], []) and _scan("y = np.uint16") == ([1], [])
    harmless = 'x.to(torch.bfloat16)\n"""uint16 bits"""\nz = x.view(torch.uint8)  # not uint16\n'
    assert _scan(harmless) == ([], [])


def test_collate_pads_packed_features_spatially_and_stacks_scales():
    enc = FeatureEncoding("int5")
    a, sa = enc.encode(torch.randn(1, 16, 4, 6))
    b, sb = enc.encode(torch.randn(1, 16, 6, 4))
    items = [CachedTargets([a[0]], [torch.ones(4, 6, dtype=torch.float16)], [sa[0]]),
             CachedTargets([b[0]], [torch.ones(6, 4, dtype=torch.float16)], [sb[0]])]
    t = CachedTargets.collate(items)
    assert t.features[0].shape == (2, 10, 6, 6) and t.features[0].dtype == torch.uint8
    assert torch.equal(t.scales[0], torch.cat([sa, sb]))
    y = enc.decode(t.features[0], t.scales[0])
    assert torch.equal(y[0, :, :4, :6], enc.decode(a[0], sa[0])) and (y[0, :, 4:] == 0).all()
    assert torch.equal(y[1, :, :6, :4], enc.decode(b[0], sb[0])) and (y[1, :, :, 4:] == 0).all()


# -- a real int5 cache ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int5_cache(tmp_path_factory, synth_root, teacher_ckpt):
    """(recipe path, cache path) of the tiny teacher's train split cached as int5."""
    d = tmp_path_factory.mktemp("int5")
    recipe_path = write_recipe(d / "r.toml", synth_root, str(teacher_ckpt))
    recipe_path.write_text(recipe_path.read_text().replace("[cache]\n", '[cache]\ndtype = "int5"\n'))
    r = load_recipe(recipe_path)
    assert r.cache.dtype == "int5"
    path = str(d / "int5.zarr")
    assert write_teacher_cache(r, path, ctx=setup("cpu")).complete
    return recipe_path, path


def test_int5_cache_reads_back_within_half_a_step_and_verifies(int5_cache):
    recipe_path, path = int5_cache
    r = load_recipe(recipe_path)
    root = zarr.open_group(path, mode="r")
    assert root.attrs["storage"]["dtype"] == "int5" and root.attrs["format_version"] == 2  # older frs refuse it
    feats, scale = root["buckets/64x64/P3/features"], root["buckets/64x64/P3/scale"]
    assert feats.shape == (48, 40, 8, 8) and feats.chunks == (1, 40, 8, 8) and feats.dtype == np.uint8
    assert scale.shape == (48, 64) and scale.dtype == np.float32
    cache = TeacherCache(path)
    assert cache.encoding == FeatureEncoding("int5")
    got = cache.read(cache.find(1, "orig"))
    raw = cache.read(cache.find(1, "orig"), raw=True)
    assert isinstance(raw, CachedTargets) and len(raw.scales) == 5 and got.scales is None
    for lv, (f_ref, f) in enumerate(zip(first_batch_features(r), got.features)):
        step = f_ref[0].abs().amax(dim=(-2, -1)) / 15  # (C,)
        err = (f.float() - f_ref[0]).abs()
        assert f.dtype == torch.float16 and (err <= step[:, None, None] * 0.5 + 1e-3 * f_ref[0].abs() + 1e-6).all()
        name = cache.levels[lv].name
        stored = root[f"buckets/64x64/{name}/scale"][0]
        np.testing.assert_allclose(stored, step.numpy(), rtol=1e-6)
        assert raw.features[lv].dtype == torch.uint8 and raw.features[lv].shape == (40, *f.shape[-2:])
        assert torch.equal(raw.scales[lv], torch.from_numpy(stored))
        assert torch.equal(cache.encoding.decode(raw.features[lv], raw.scales[lv]), f)
        assert root["buckets/64x64/crc"][0, 2 * lv] == view_crc(root[f"buckets/64x64/{name}/features"][0], stored)
    assert verify_cache(path).ok


def test_cached_teacher_decodes_a_raw_int5_batch_to_the_decoded_views(int5_cache):
    recipe_path, path = int5_cache
    r = load_recipe(recipe_path)
    cache = TeacherCache(path)
    keys = [(0, "orig"), (5, "hflip"), (11, "orig")]
    batch = collate([CachedViews(CocoViews.from_config(r.data, "train", r.geometry), cache)[k] for k in keys])
    batch = batch.to(torch.device("cpu"))
    assert isinstance(batch.teacher, CachedTargets)
    assert [s.shape for s in batch.teacher.scales] == [(3, 64)] * 5
    assert batch.teacher.features[0].dtype == torch.uint8 and batch.teacher.features[0].shape == (3, 40, 8, 8)
    head = cache.build_head()
    targets = CachedTeacher(head, [8, 16, 32, 64, 128], FeatureEncoding("int5"))(batch, need_logits=True)
    views = [cache.read(cache.find(batch.image_ids[i], v)) for i, (_, v) in enumerate(keys)]
    for lv, f in enumerate(targets.features):
        expected = torch.stack([v.features[lv] for v in views])
        assert f.dtype == torch.float16 and torch.equal(f, expected)
    with torch.no_grad():
        logits = head([torch.stack([v.features[lv] for v in views]).float() for lv in range(5)])
    for a, b in zip(targets.cls_logits, logits):
        assert torch.equal(a, b)
    # channels-last (the default on CUDA): the same features written NHWC, the head's weights NHWC
    nhwc = CachedTeacher(cache.build_head(), [8, 16, 32, 64, 128], FeatureEncoding("int5"), channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in nhwc.cls_head.parameters() if p.dim() == 4)
    other = nhwc(batch, need_logits=True)
    for f, g in zip(other.features, targets.features):
        assert f.is_contiguous(memory_format=torch.channels_last) and f.stride(1) == 1 and torch.equal(f, g)
    for a, b in zip(other.cls_logits, logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(CacheFormatError, match="^distill: the batch's cached targets: float16 features take no "
                                               "per-channel scales, got some .*CachedTeacher.from_cache"):
        CachedTeacher(head, [8, 16, 32, 64, 128], FeatureEncoding("float16"))(batch, need_logits=False)
    batch.teacher.scales = None
    with pytest.raises(CacheFormatError, match="^distill: the batch's cached targets: int5 features need their "
                                               "per-channel scales, got none"):
        CachedTeacher.from_cache(cache)(batch, need_logits=False)


def test_int5_cache_info_distill_visualize_and_hdf5_export(int5_cache, tmp_path):
    recipe_path, path = int5_cache
    result = runner.invoke(app, ["cache", "info", path])
    assert result.exit_code == 0 and "int5 features" in result.output, result.output
    result = runner.invoke(app, ["distill", "--pipeline", str(recipe_path), "--cache", path, "--out",
                                 str(tmp_path / "s"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "model_final.pt").is_file()
    result = runner.invoke(app, ["visualize", "--cache", path, "--out", str(tmp_path / "v.png")])
    assert result.exit_code == 0 and (tmp_path / "v.png").is_file(), result.output
    h5 = tmp_path / "int5.h5"
    result = runner.invoke(app, ["cache", "export", path, str(h5)])
    assert result.exit_code == 0, result.output
    z, h = TeacherCache(path), TeacherCache(str(h5))
    assert h.dtype == "int5" and h.encoding == z.encoding and verify_cache(str(h5)).ok
    for k in (0, 17, 47):
        for raw in (False, True):
            a, b = z.read(k, raw=raw), h.read(k, raw=raw)
            assert (a.scales is None) == (b.scales is None) == (not raw)
            for x, y in zip(a.features + a.masks + (a.scales or []), b.features + b.masks + (b.scales or []),
                            strict=True):
                assert x.dtype == y.dtype and torch.equal(x, y)


def test_a_bfloat16_cache_reaches_the_teacher_source_as_bfloat16_features(synth_root, teacher_ckpt, tmp_path):
    """The loader carries the features as stored; bfloat16 arrives as bfloat16 (the store's uint16 bit pattern,
    reinterpreted by the encoding), equal to the decoded views."""
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)), ["cache.dtype='bfloat16'"])
    path = str(tmp_path / "bf16.zarr")
    write_teacher_cache(r, path, ctx=setup("cpu"))
    cache = TeacherCache(path)
    keys = [(0, "orig"), (1, "hflip")]
    batch = collate([CachedViews(CocoViews.from_config(r.data, "train", r.geometry), cache)[k] for k in keys])
    assert batch.teacher.scales is None and batch.teacher.features[0].dtype == torch.bfloat16
    stored = zarr.open_group(path, mode="r")["buckets/64x64/P3/features"]
    row = int(cache.row[cache.find(batch.image_ids[0], "orig")])
    assert stored.dtype == np.uint16 and stored[row].dtype == np.uint16  # on disk: the bit pattern
    assert torch.equal(batch.teacher.features[0][0], cache.encoding.from_numpy(stored[row]))
    targets = CachedTeacher.from_cache(cache)(batch, need_logits=True)
    for i, (image_id, view) in enumerate(zip(batch.image_ids, ("orig", "hflip"))):
        assert torch.equal(targets.features[0][i], cache.read(cache.find(image_id, view)).features[0])
