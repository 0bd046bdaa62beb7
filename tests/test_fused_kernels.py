"""The Triton kernels against the PyTorch they replace on CUDA, on the CPU through Triton's interpreter: the fused
FRS terms (``frs_cli.fused_losses``: ``losses._head_term``, ``_feature_term``), the packed codes' decode
(``frs_cli.fused_decode``: ``FeatureEncoding.decode``) and the teacher features' quantisation and packing
(``frs_cli.fused_encode``: ``FeatureEncoding.encode``).

They run under ``TRITON_INTERPRET=1`` (set before Triton is imported, hence a child process) on CPU tensors:
contiguous and channels-last, float32 and bfloat16, levels down to 1x1 and channel counts that are no multiple of
the tile, one of them wider than the forward's. ``tests/test_gpu.py`` compares them on the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from frs_cli import fused_losses, losses

    torch.manual_seed(0)
    grids = [(9, 13), (5, 7), (3, 4), (1, 1)]
    rows = []
    for channels, dtype, layout in [(20, torch.float32, "nchw"), (40, torch.float32, "nhwc"),
                                    (33, torch.bfloat16, "nchw"), (72, torch.bfloat16, "nhwc"),
                                    (300, torch.float32, "nchw"),  # more channels than one forward tile
                                    (45, torch.bfloat16, "view")]:  # gaps between the images
        def levels(scale, kind=dtype, grad=False):
            out = []
            for h, w in grids:
                x = (torch.randn(2, channels, h, w) * scale).to(kind)
                if layout == "nhwc":
                    x = x.to(memory_format=torch.channels_last)
                if layout == "view":  # (B, H, W, C) rows of a longer (B, 3 + H*W, C) tensor, as (B, C, H, W)
                    base = torch.zeros(2, 3 + h * w, channels, dtype=kind)
                    base[:, 3:] = x.permute(0, 2, 3, 1).reshape(2, h * w, channels)
                    x = base[:, 3:].view(2, h, w, channels).permute(0, 3, 1, 2)
                out.append(x.requires_grad_(grad))
            return out
        masks = [torch.rand(2, h, w) for h, w in grids]
        weights = losses.position_weights(masks)
        for name, fused, plain, teacher_kind in [("head", fused_losses.head_term, losses._head_term, dtype),
                                                 ("feature", fused_losses.feature_term, losses._feature_term,
                                                  torch.float16)]:
            student, teacher = levels(3.0, grad=True), levels(3.0, kind=teacher_kind)
            g = torch.tensor(0.7)
            want = plain(student, teacher, weights)
            want.backward(g)
            want_grads = [x.grad.clone() for x in student]
            for x in student:
                x.grad = None
            handed = {}  # per level the gradient as the term hands it back (a leaf's .grad is laid out as the leaf)
            hooks = [x.register_hook(lambda grad, lv=lv: handed.__setitem__(lv, grad)) for lv, x in enumerate(student)]
            got = fused(student, teacher, weights)
            got.backward(g)
            for h in hooks:
                h.remove()
            grads = [x.grad for x in student]
            # the largest difference in steps of the student's dtype at the level's largest gradient
            ulps = max(float((a.float() - b.float()).abs().max() / (b.float().abs().max() * torch.finfo(dtype).eps))
                       for a, b in zip(grads, want_grads))
            rows.append({"term": name, "channels": channels, "dtype": str(dtype), "layout": layout,
                         "got": float(got), "want": float(want), "ulps": ulps,
                         # each gradient handed back in its input's layout (dense: a view's gaps left out)
                         "layouts": [handed[lv].stride() == torch.empty_like(x).stride() for lv, x in enumerate(student)],
                         "gaps": [x.stride(0) != x.numel() // 2 for x in student],
                         "dtypes": [str(a.dtype) for a in grads]})
    json.dump(rows, sys.stdout)
""")


DECODE = textwrap.dedent("""
    import json, sys
    import torch
    from frs_cli import fused_decode
    from frs_cli.cache.encoding import FeatureEncoding

    torch.manual_seed(0)
    rows = []
    for name in ("int4", "int5", "int6"):
        enc = FeatureEncoding(name)
        a = torch.randint(0, 256, (2, enc.bits * 4, 16, 17), dtype=torch.uint8)
        for v in range(256):  # every byte value in every byte of a group
            a[1, :, v // 17, v % 17] = v
        scale = torch.rand(2, 32) * 0.3 + 1e-3
        want = enc.decode(a, scale)  # the PyTorch form (CPU tensors)
        for channels_last in (False, True):
            got = fused_decode.decode_packed(a, scale, enc.bits, channels_last)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            rows.append({"name": name, "channels_last": channels_last, "equal": torch.equal(got, want),
                         "dtype": str(got.dtype), "layout": got.is_contiguous(memory_format=fmt)})
    json.dump(rows, sys.stdout)
""")


ENCODE = textwrap.dedent("""
    import json, sys
    import torch
    from frs_cli import fused_encode
    from frs_cli.cache.encoding import FeatureEncoding

    torch.manual_seed(0)
    rows = []
    for name in ("int8", "int6", "int5", "int4"):
        enc = FeatureEncoding(name)
        qmax = 2 ** (enc.bits - 1) - 1
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            x = torch.randn(2, 24, 9, 31) * 3
            x[0, 5] = 0  # an all-zero channel: scale 1, codes 0
            # channel 7 of view 1: every half step between codes, at a scale of 2**-4 (ties, rounded to even)
            steps = (torch.arange(-qmax, qmax).float() + 0.5) * 2.0 ** -4
            x[1, 7] = 0
            x[1, 7].view(-1)[: steps.numel()] = steps
            x[1, 7, -1, -1] = qmax * 2.0 ** -4
            x = x.to(dtype)
            want, scale = enc.encode(x)  # the PyTorch form (CPU tensors)
            ratio = x.float() / scale[..., None, None]
            got = fused_encode.encode_scaled(x, scale, enc.bits)
            rows.append({"name": name, "dtype": str(dtype), "equal": torch.equal(got, want),
                         "got": [str(got.dtype), list(got.shape)], "want": [str(want.dtype), list(want.shape)],
                         "ties": int((ratio - ratio.floor() == 0.5).sum())})
    json.dump(rows, sys.stdout)
""")


def _interpreted(script: str) -> list[dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "FRS_FUSED_LOSSES": "1", "FRS_FUSED_DECODE": "1",
           "FRS_FUSED_ENCODE": "1"}
    done = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def rows():
    return _interpreted(SCRIPT)


def test_the_fused_decode_gives_the_bits_of_the_pytorch_decode_in_either_layout():
    rows = _interpreted(DECODE)
    assert len(rows) == 6
    for r in rows:
        assert r["equal"] and r["dtype"] == "torch.float16" and r["layout"], r


def test_the_fused_encode_gives_the_bytes_of_the_pytorch_encode():
    """Quantised (int8) and packed (int6, int5, int4), from float32, bfloat16 and float16 features: the same codes
    and bytes, exact ties between two codes (rounded half to even) and an all-zero channel among them."""
    rows = _interpreted(ENCODE)
    assert len(rows) == 12
    for r in rows:
        assert r["equal"] and r["got"] == r["want"], r
        assert r["ties"] >= 2 * (2 ** (int(r["name"][3:]) - 1) - 1), r  # channel 7's half steps, at least


def test_the_fused_terms_equal_the_pytorch_form_in_value_and_gradient(rows):
    assert len(rows) == 12 and {r["term"] for r in rows} == {"head", "feature"}
    assert [all(r["gaps"]) for r in rows] == [r["layout"] == "view" for r in rows]
    for r in rows:
        assert r["got"] == pytest.approx(r["want"], rel=2e-6), r
        assert r["ulps"] <= 2.0, r
        assert all(r["layouts"]) and set(r["dtypes"]) == {r["dtype"]}, r


def test_the_kernels_are_used_on_cuda_tensors_only_and_can_be_turned_off(monkeypatch):
    import torch

    from frs_cli import fused_decode, fused_encode, fused_losses

    x = torch.zeros(1, 2, 3, 3)
    assert not fused_losses.usable(x, x) and not fused_decode.usable(x)  # CPU tensors: the PyTorch form
    assert not fused_encode.usable(x)
    monkeypatch.setattr(fused_losses, "ENABLED", False)
    assert not fused_losses.usable(x, x)
    env = {**os.environ, "FRS_FUSED_LOSSES": "0", "FRS_FUSED_DECODE": "0", "FRS_FUSED_ENCODE": "0"}
    code = ("from frs_cli import fused_decode, fused_encode, fused_losses; "
            "print(fused_losses.ENABLED, fused_decode.ENABLED, fused_encode.ENABLED)")
    off = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                         timeout=120)
    assert off.stdout.strip() == "False False False"


def test_where_triton_cannot_run_the_kernels_they_are_tried_once_and_the_pytorch_form_takes_over(caplog):
    """Each module's ``_CHECK`` (``KernelCheck``) tries the kernels on a tiny input: on this CPU (no GPU driver)
    Triton cannot launch them, so it says so in one warning and returns False; under the interpreter they run and it
    returns True."""
    import torch

    from frs_cli import fused_decode, fused_encode, fused_losses

    with caplog.at_level("WARNING"):
        assert fused_losses._CHECK.try_on(torch.device("cpu")) is False
        assert fused_decode._CHECK.try_on(torch.device("cpu")) is False
        assert fused_encode._CHECK.try_on(torch.device("cpu")) is False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("fused FRS terms: the Triton kernels do not run on cpu (")
    assert lines[0].endswith("); the PyTorch form computes them")
    assert lines[1].startswith("fused decode: the Triton kernel does not run on cpu (")
    assert lines[2].startswith("fused encode: the Triton kernel does not run on cpu (")
    assert lines[2].endswith("); features are encoded in PyTorch")
    code = ("import torch; from frs_cli import fused_decode, fused_encode, fused_losses; "
            "print(*(m._CHECK.try_on(torch.device('cpu')) for m in (fused_losses, fused_decode, fused_encode)))")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.strip() == "True True True", done.stderr[-2000:]


def test_a_kernel_check_tries_each_device_once_and_warns_once_where_the_trial_fails(caplog):
    """``KernelCheck(device)`` runs the trial on a device's first call only and keeps the answer: a failing device
    gives one warning naming the kernels, the device, the error and what runs instead, however often it is asked."""
    import torch

    from frs_cli.kernel_check import KernelCheck

    tried = []

    def trial(device):
        tried.append(device)
        if device.type == "meta":
            raise RuntimeError("no launcher here\nsecond line")

    check = KernelCheck("the kernels do not run", "PyTorch runs instead", trial)
    with caplog.at_level("WARNING"):
        assert [check(torch.device("cpu")) for _ in range(3)] == [True] * 3
        assert [check(torch.device("meta")) for _ in range(3)] == [False] * 3
    assert tried == [torch.device("cpu"), torch.device("meta")]
    assert [r.getMessage() for r in caplog.records] == [
        "the kernels do not run on meta (RuntimeError: no launcher here); PyTorch runs instead"]
