"""Feature encodings of the cache: int8 and the packed int6/int5/int4, decoded after the host-to-device copy."""

import numpy as np
import pytest
import torch
import zarr
from conftest import first_batch_features, write_recipe
from typer.testing import CliRunner

from frs_cli.cache.reader import CachedViews, TeacherCache
from frs_cli.cache.schema import stored_channels
from frs_cli.cache.shard_writer import view_crc
from frs_cli.cache.store import decode, encode
from frs_cli.cache.verify import verify_cache
from frs_cli.cache.writer import write_teacher_cache
from frs_cli.cli.app import app
from frs_cli.config import load_recipe
from frs_cli.data.coco import CocoViews, collate
from frs_cli.data.targets import collate_teacher
from frs_cli.dist import setup
from frs_cli.errors import CacheFormatError, FrsError
from frs_cli.train.objectives import CachedTeacher

runner = CliRunner()
BITS = {"int8": 8, "int6": 6, "int5": 5, "int4": 4}
ALL = ("float16", "bfloat16", "float32", "int8", "int6", "int5", "int4")


def _features(seed: int = 0) -> torch.Tensor:
    """(2, 16, 5, 7) fp32 with channel ranges from 0.01 to 10 and channel 3 all zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 5, 7, generator=g) * torch.logspace(-2, 1, 16).view(1, 16, 1, 1)
    x[:, 3] = 0
    return x


@pytest.mark.parametrize("dtype", ["int8", "int6", "int5", "int4"])
def test_scaled_dtypes_round_trip_within_half_a_step_per_channel(dtype):
    bits = BITS[dtype]
    qmax = 2 ** (bits - 1) - 1
    x = _features()
    data, scale = encode(x, dtype)
    assert data.shape == (2, 16 * bits // 8, 5, 7) and data.is_contiguous()
    assert data.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert scale.shape == (2, 16) and scale.dtype == torch.float32
    expected = x.abs().amax(dim=(-2, -1)) * (1.0 / qmax)  # max|x| / qmax, to the bit on CPU and CUDA
    expected[:, 3] = 1  # an all-zero channel gets scale 1
    torch.testing.assert_close(scale, expected, rtol=0, atol=0)
    y = decode(data, dtype, scale)
    assert y.shape == x.shape and y.dtype == torch.float16
    err = (y.float() - x).abs()
    # half a quantisation step, plus the float16 rounding of the result (2**-11 relative)
    assert (err <= scale[..., None, None] / 2 + x.abs() * 2**-11 + 1e-7).all()
    assert (y[:, 3] == 0).all()
    codes = torch.round(y.float() / scale[..., None, None])
    assert codes.abs().amax(dim=(-2, -1))[:, [0, 1, 2, 4]].eq(qmax).all()  # each channel's max maps to +-qmax


def test_int5_packs_eight_channels_of_a_position_into_the_bytes_computed_by_hand():
    codes = [1, -1, 15, -15, 0, 7, -8, 3]
    x = torch.zeros(1, 8, 1, 2)
    x[0, :, 0, 0] = 15.0  # every channel's max |x| is 15: scale 1, so the codes are the values
    x[0, :, 0, 1] = torch.tensor(codes, dtype=torch.float32)
    data, scale = encode(x, "int5")
    assert torch.equal(scale, torch.ones(1, 8))
    # 5-bit two's complement: 1, 31, 15, 17, 0, 7, 24, 3 at bits 0, 5, ..., 35 of a little-endian integer
    word = sum((c & 31) << (5 * i) for i, c in enumerate(codes))
    assert list(word.to_bytes(5, "little")) == [225, 191, 8, 14, 30]
    assert data[0, :, 0, 1].tolist() == [225, 191, 8, 14, 30]
    assert data[0, :, 0, 0].tolist() == list(sum(15 << (5 * i) for i in range(8)).to_bytes(5, "little"))
    assert decode(data, "int5", scale)[0, :, 0, 1].tolist() == codes


@pytest.mark.parametrize("dtype", ["int6", "int5", "int4"])
def test_zero_bytes_decode_to_zero(dtype):
    zeros = torch.zeros(3, 2 * BITS[dtype], 4, 4, dtype=torch.uint8)  # what collate pads with
    y = decode(zeros, dtype, torch.full((3, 16), 2.5))
    assert y.shape == (3, 16, 4, 4) and torch.equal(y, torch.zeros(3, 16, 4, 4, dtype=torch.float16))


def test_packed_dtypes_need_a_multiple_of_8_channels():
    assert [stored_channels(256, d) for d in ALL] == [256, 256, 256, 256, 192, 160, 128]
    assert stored_channels(64, "int5") == 40 and stored_channels(12, "int8") == 12
    with pytest.raises(CacheFormatError, match="^cache dtype int5: packs 8 channels at a time, the teacher's 60 "
                                               "channels are not a multiple of 8$"):
        stored_channels(60, "int5")
    with pytest.raises(CacheFormatError, match="cache dtype int4: .* 12 channels are not a multiple of 8"):
        encode(torch.ones(1, 12, 2, 2), "int4")


@pytest.mark.parametrize("dtype", ALL)
def test_decode_of_a_batch_equals_decode_of_each_view_and_numpy_equals_tensor(dtype):
    data, scale = encode(_features(1), dtype)
    batch = decode(data, dtype, scale)
    from_numpy = decode(data.numpy(), dtype, None if scale is None else scale.numpy())
    assert batch.dtype == from_numpy.dtype and torch.equal(batch, from_numpy)
    for i in range(2):
        view = decode(data[i], dtype, None if scale is None else scale[i])
        assert view.dtype == batch.dtype and torch.equal(view, batch[i])
        view_np = decode(data[i].numpy(), dtype, None if scale is None else scale[i].numpy())
        assert torch.equal(view_np, batch[i])


def test_old_encodings_store_and_decode_as_before():
    x = _features(2)
    for dtype, stored in (("float16", torch.float16), ("float32", torch.float32), ("bfloat16", torch.uint16)):
        data, scale = encode(x, dtype)
        assert scale is None and data.dtype == stored and data.shape == x.shape
        assert torch.equal(decode(data, dtype), x.to(getattr(torch, dtype)))
    data, scale = encode(x, "int8")
    q = torch.round(x / scale[..., None, None]).clamp(-127, 127)
    assert torch.equal(data, q.to(torch.int8))
    assert torch.equal(decode(data.numpy(), "int8", scale.numpy()), (q * scale[..., None, None]).half())


def test_decode_refuses_features_of_another_storage_dtype_or_without_scales():
    data, scale = encode(_features(), "int5")
    with pytest.raises(CacheFormatError, match="^cache decode: int5 features are stored as uint8, got torch.float16$"):
        decode(data.half(), "int5", scale)
    with pytest.raises(CacheFormatError, match="^cache decode: int5 features need their per-channel scales, got none$"):
        decode(data, "int5")


def test_collate_pads_packed_features_spatially_and_stacks_scales():
    a, sa = encode(torch.randn(1, 16, 4, 6), "int5")
    b, sb = encode(torch.randn(1, 16, 6, 4), "int5")
    items = [{"features": [a[0]], "scales": [sa[0]], "masks": [torch.ones(4, 6, dtype=torch.float16)]},
             {"features": [b[0]], "scales": [sb[0]], "masks": [torch.ones(6, 4, dtype=torch.float16)]}]
    t = collate_teacher(items)
    assert t["features"][0].shape == (2, 10, 6, 6) and t["features"][0].dtype == torch.uint8
    assert torch.equal(t["scales"][0], torch.cat([sa, sb]))
    y = decode(t["features"][0], "int5", t["scales"][0])
    assert torch.equal(y[0, :, :4, :6], decode(a[0], "int5", sa[0])) and (y[0, :, 4:] == 0).all()
    assert torch.equal(y[1, :, :6, :4], decode(b[0], "int5", sb[0])) and (y[1, :, :, 4:] == 0).all()


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
    got = cache.read(cache.find(1, "orig"))
    raw = cache.read(cache.find(1, "orig"), raw=True)
    assert set(raw) == {"features", "scales", "masks"} and "scales" not in got
    for lv, (f_ref, f) in enumerate(zip(first_batch_features(r), got["features"])):
        step = f_ref[0].abs().amax(dim=(-2, -1)) / 15  # (C,)
        err = (f.float() - f_ref[0]).abs()
        assert f.dtype == torch.float16 and (err <= step[:, None, None] * 0.5 + 1e-3 * f_ref[0].abs() + 1e-6).all()
        name = cache.levels[lv].name
        stored = root[f"buckets/64x64/{name}/scale"][0]
        np.testing.assert_allclose(stored, step.numpy(), rtol=1e-6)
        assert raw["features"][lv].dtype == torch.uint8 and raw["features"][lv].shape == (40, *f.shape[-2:])
        assert torch.equal(raw["scales"][lv], torch.from_numpy(stored))
        assert torch.equal(decode(raw["features"][lv], "int5", raw["scales"][lv]), f)
        assert root["buckets/64x64/crc"][0, 2 * lv] == view_crc(root[f"buckets/64x64/{name}/features"][0], stored)
    assert verify_cache(path).ok


def test_cached_teacher_decodes_a_raw_int5_batch_to_the_decoded_views(int5_cache):
    recipe_path, path = int5_cache
    r = load_recipe(recipe_path)
    cache = TeacherCache(path)
    keys = [(0, "orig"), (5, "hflip"), (11, "orig")]
    batch = collate([CachedViews(CocoViews.from_config(r.data, "train", r.geometry), cache)[k] for k in keys])
    batch = batch.to(torch.device("cpu"))
    assert [s.shape for s in batch.teacher["scales"]] == [(3, 64)] * 5
    assert batch.teacher["features"][0].dtype == torch.uint8 and batch.teacher["features"][0].shape == (3, 40, 8, 8)
    head = cache.build_head()
    targets = CachedTeacher(head, [8, 16, 32, 64, 128], "int5")(batch, need_logits=True)
    views = [cache.read(cache.find(batch.image_ids[i], v)) for i, (_, v) in enumerate(keys)]
    for lv, f in enumerate(targets.features):
        expected = torch.stack([v["features"][lv] for v in views])
        assert f.dtype == torch.float16 and torch.equal(f, expected)
    with torch.no_grad():
        logits = head([torch.stack([v["features"][lv] for v in views]).float() for lv in range(5)])
    for a, b in zip(targets.cls_logits, logits):
        assert torch.equal(a, b)
    with pytest.raises(FrsError, match="carry per-channel scales, the teacher source expects float16"):
        CachedTeacher(head, [8, 16, 32, 64, 128])(batch, need_logits=False)


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
    assert h.dtype == "int5" and verify_cache(str(h5)).ok
    for k in (0, 17, 47):
        for raw in (False, True):
            a, b = z.read(k, raw=raw), h.read(k, raw=raw)
            assert set(a) == set(b)
            for key in a:
                for x, y in zip(a[key], b[key]):
                    assert x.dtype == y.dtype and torch.equal(x, y)


def test_a_bfloat16_cache_reaches_the_teacher_source_as_bfloat16_features(synth_root, teacher_ckpt, tmp_path):
    """The loader carries only the quantised dtypes raw; bfloat16 arrives as bfloat16 (not its 16-bit pattern),
    equal to the decoded views."""
    r = load_recipe(write_recipe(tmp_path / "r.toml", synth_root, str(teacher_ckpt)), ["cache.dtype='bfloat16'"])
    path = str(tmp_path / "bf16.zarr")
    write_teacher_cache(r, path, ctx=setup("cpu"))
    cache = TeacherCache(path)
    keys = [(0, "orig"), (1, "hflip")]
    batch = collate([CachedViews(CocoViews.from_config(r.data, "train", r.geometry), cache)[k] for k in keys])
    assert "scales" not in batch.teacher and batch.teacher["features"][0].dtype == torch.bfloat16
    targets = CachedTeacher.from_cache(cache)(batch, need_logits=True)
    for i, (image_id, view) in enumerate(zip(batch.image_ids, ("orig", "hflip"))):
        assert torch.equal(targets.features[0][i], cache.read(cache.find(image_id, view))["features"][0])
