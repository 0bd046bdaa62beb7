"""ONNX export of a trained RetinaNet: onnxruntime reproduces PyTorch on other batch and image sizes."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import save_random_model
from typer.testing import CliRunner

from frs_cli.cli.app import app
from frs_cli.errors import ModelError

runner = CliRunner()


def needs_onnx():
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install 'frs[onnx]')")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synth_root):
    """A seeded random tiny RetinaNet student exported once through the command line: (checkpoint, onnx, result)."""
    needs_onnx()
    d = tmp_path_factory.mktemp("export")
    ckpt = save_random_model(d / "student.pt", "retinanet_tiny_fpn", synth_root, anchor_size=16, seed=3)
    result = runner.invoke(app, ["export", "--onnx", str(ckpt), str(d / "out" / "student.onnx")])
    return ckpt, d / "out" / "student.onnx", result


def test_export_cli_writes_the_file_and_reports_its_check(exported):
    _, path, result = exported
    assert result.exit_code == 0, result.output
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["student.onnx"]  # no temp file, no .data
    assert "checked with onnxruntime on 1x3x96x64, 3x3x128x128: largest difference" in result.stdout
    assert re.search(r"^export 3/3 \(100%\) [\d.,]+ step/s elapsed \d:\d\d:\d\d eta 0:00:00", result.stderr, re.MULTILINE)


def test_onnxruntime_matches_pytorch_for_other_batch_and_image_sizes(exported):
    import onnxruntime as ort

    from frs_cli.train.checkpoint import load_detector

    ckpt, path, _ = exported
    detector, _ = load_detector(ckpt)
    detector.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert all(isinstance(d, str) for d in session.get_inputs()[0].shape[:1] + session.get_inputs()[0].shape[2:])
    names = [o.name for o in session.get_outputs()]
    assert names == [f"cls_logits_P{i}" for i in range(3, 8)] + [f"bbox_deltas_P{i}" for i in range(3, 8)]
    g = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 64, 64), (4, 3, 64, 160), (2, 3, 192, 96)]:
        images = (torch.rand(*shape, generator=g) * 255).round()
        got = session.run(None, {"images": images.numpy()})
        with torch.no_grad():  # the adapter's own forward: the detector's path, not the export wrapper
            out = detector(images.to(torch.uint8), [shape[2:]] * shape[0], detect=False)
        assert len(got) == 10
        for level, (h, w) in enumerate((-(-shape[2] // s), -(-shape[3] // s)) for s in (8, 16, 32, 64, 128)):
            cls = got[level]
            assert cls.shape == (shape[0], 9 * detector.num_classes, h, w)
            torch.testing.assert_close(torch.from_numpy(cls), out.cls_logits[level], atol=1e-4, rtol=1e-4)
            reg = detector.model.head.regression_head
            with torch.no_grad():
                deltas = reg.bbox_reg(reg.conv(out.features[level]))
            assert got[5 + level].shape == (shape[0], 9 * 4, h, w)
            torch.testing.assert_close(torch.from_numpy(got[5 + level]), deltas, atol=1e-4, rtol=1e-4)
        assert float(np.abs(got[0]).max()) > 0.1  # real values were compared, not zeros



def test_a_canvas_of_the_pad_value_gives_the_training_padding_and_pytorch_s_outputs_everywhere(exported):
    import onnx
    import onnxruntime as ort

    from frs_cli.train.checkpoint import load_detector

    ckpt, path, _ = exported
    detector, _ = load_detector(ckpt)
    detector.eval()
    pad = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["frs_pad_value"])
    assert pad == pytest.approx([123.675, 116.28, 103.53])  # ImageNet's RGB mean, in 0..255
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(2)
    sizes = [(96, 64), (40, 128)]  # two images of a (2, 3, 96, 128) batch, each padded right and bottom
    pixels = (torch.rand(2, 3, 96, 128, generator=g) * 255).round().to(torch.uint8)
    black, canvas = torch.zeros(2, 3, 96, 128), torch.tensor(pad).view(1, 3, 1, 1).expand(2, 3, 96, 128).clone()
    for i, (h, w) in enumerate(sizes):
        black[i, :, :h, :w] = canvas[i, :, :h, :w] = pixels[i, :, :h, :w].float()
    with torch.no_grad():  # the detector's own path: uint8 images and their sizes, normalised with zero padding
        out = detector(black.to(torch.uint8), sizes, detect=False)
    got = session.run(None, {"images": canvas.numpy()})
    for level in range(5):
        torch.testing.assert_close(torch.from_numpy(got[level]), out.cls_logits[level], atol=1e-4, rtol=1e-4)
    wrong = session.run(None, {"images": black.numpy()})[0]  # a black canvas: another border
    assert float((torch.from_numpy(wrong) - out.cls_logits[0]).abs().max()) > 1e-2

def test_the_file_carries_what_decoding_needs(exported):
    import onnx

    _, path, _ = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["frs_family"] == "retinanet" and meta["frs_arch"] == "retinanet_tiny_fpn"
    assert [lv["stride"] for lv in json.loads(meta["frs_levels"])] == [8, 16, 32, 64, 128]
    assert meta["frs_num_anchors"] == "9" and meta["frs_anchor_size"] == "16"
    assert json.loads(meta["frs_geometry"])["size_divisible"] == 32
    assert len(json.loads(meta["frs_label_to_category"])) == int(meta["frs_num_classes"])


def test_export_refuses_another_family_in_one_line_and_writes_nothing(tmp_path, synth_root):
    needs_onnx()
    from frs_cli.export.onnx import export_onnx

    ckpt = save_random_model(tmp_path / "fcos.pt", "fcos_tiny_fpn", synth_root)
    with pytest.raises(ModelError, match="expected a retinanet checkpoint, got a fcos detector"):
        export_onnx(ckpt, tmp_path / "x.onnx")
    result = runner.invoke(app, ["export", "--onnx", str(tmp_path / "missing.pt"), str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "expected a model file at" in result.stderr
    assert "but it does not exist" in result.stderr
    assert not (tmp_path / "x.onnx").exists()
