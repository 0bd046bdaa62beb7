"""Weights by path: torchvision's own state-dict files (detector and ImageNet backbone), which published file a
local file is, and torch's hub cache as the other offline route. Nothing is downloaded: files are saved from
torchvision's builders with random weights, and the published names are monkeypatched where a test needs one."""

from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import save_random_model, write_recipe
from torchvision.ops import FrozenBatchNorm2d
from typer.testing import CliRunner

import frs_cli.models.weights as weights_mod
from frs_cli import models
from frs_cli.cache.identity import teacher_fingerprint
from frs_cli.cli.app import app
from frs_cli.errors import ModelError
from frs_cli.models import ModelConfig, build_detector, model_fingerprint
from frs_cli.models.base import to_head_layout
from frs_cli.models.weights import Published


def _outputs(detector, size: int = 64):
    """FPN features and class logits of one seeded image of ``size`` px, padded on the right."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        out = detector.eval()(images, [(size, size - 16)], detect=False)
    return out.features + out.cls_logits


def _save_state(path, module) -> str:
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, path)
    return str(path)


def _no_download(monkeypatch):
    """Any attempt to download is an error here (so a test cannot pass by reaching the network)."""
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"test: no download allowed ({url})")
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_torchvision_state_dict_file_loads_and_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    cfg = ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16)
    original = build_detector(cfg, 5)
    path = _save_state(tmp_path / "retinanet_tiny.pth", original.core())
    loaded = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16, weights=path), 5)
    assert model_fingerprint(loaded) == model_fingerprint(original)
    for got, want in zip(_outputs(loaded), _outputs(original), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_file_from_torchvisions_own_builder_loads_into_the_same_arch(tmp_path):
    torch.manual_seed(4)
    tv = torchvision.models.detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    path = _save_state(tmp_path / "rn50v2.pth", tv)
    loaded = build_detector(ModelConfig(arch="retinanet_resnet50_fpn_v2", weights=path), 91)
    assert model_fingerprint(loaded) == models.fingerprint_state_dict(tv.state_dict())
    tv.eval()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        features = list(tv.backbone(loaded.normalize(images, [(64, 64)])).values())
        logits = tv.head.classification_head(features)  # (1, sum H*W*A, 91)
        got = loaded.eval()(images, [(64, 64)], detect=False)
    for g, w in zip(got.features, features, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert tuple(got.cls_logits[0].shape) == (1, 9 * 91, 8, 8)
    torch.testing.assert_close(to_head_layout(got.cls_logits, 91), logits, rtol=0, atol=0)


def test_truncated_file_is_one_line(tmp_path):
    torch.manual_seed(3)
    full = _save_state(tmp_path / "full.pth", build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 5).core())
    cut = tmp_path / "cut.pth"
    data = Path(full).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"weights '.*cut.pth': expected a torch checkpoint .*got a damaged or truncated "
                       r"zip archive") as err:
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(cut)), 5)
    assert "\n" not in str(err.value) and "truncated copy" in str(err.value)


def test_file_named_as_a_published_one_but_of_another_hash_is_a_truncated_copy(tmp_path, monkeypatch):
    torch.manual_seed(3)
    good = _save_state(tmp_path / "good.pth", build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 5).core())
    digest = hashlib.sha256(Path(good).read_bytes()).hexdigest()
    other = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    name = f"retinanet_tiny_coco-{other}.pth"
    monkeypatch.setattr(weights_mod, "published_weights",
                        lambda builder: [Published("Tiny_Weights.COCO_V1", name, other, 5)])
    copy = tmp_path / name
    copy.write_bytes(Path(good).read_bytes())
    with pytest.raises(ModelError, match=f"named as torchvision's Tiny_Weights.COCO_V1 file, but its sha256 begins "
                                         f"{digest[:8]}, the published file's {other}: a truncated or altered copy"):
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(copy)), 5)


def test_foreign_state_dict_is_one_line_naming_missing_unexpected_and_shapes(tmp_path):
    resnet = _save_state(tmp_path / "resnet18.pth", torchvision.models.resnet18())
    with pytest.raises(ModelError, match=r"do not fit retinanet_tiny_fpn with 5 classes: \d+ missing \(e\.g\. "
                                         r"\['backbone\.body.*\d+ unexpected \(e\.g\. \['conv1\.weight'.*"
                                         r"ImageNet classifier: name it in weights_backbone") as err:
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=resnet), 5)
    assert "\n" not in str(err.value)
    torch.manual_seed(3)
    three = _save_state(tmp_path / "three.pth", build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 3).core())
    with pytest.raises(ModelError, match=r"5 classes: 2 of another shape \(e\.g\. "
                                         r"\[\('head\.classification_head\.cls_logits\.weight', \(27, 64, 3, 3\), "
                                         r"\(45, 64, 3, 3\)\)") as err:
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=three), 5)
    assert "missing" not in str(err.value) and "unexpected" not in str(err.value)
    torch.save({"epoch": 3, "state_dict": {}}, tmp_path / "mm.pth")
    with pytest.raises(ModelError, match=r"expected an frs checkpoint .* or a torchvision state dict .*"
                                         r"\['epoch', 'state_dict'\]"):
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(tmp_path / "mm.pth")), 5)


def test_a_state_dict_with_extra_keys_names_only_the_unexpected_ones(tmp_path):
    """The mismatch line names the parts that differ: no "0 missing (e.g. [])" beside the keys that are extra."""
    torch.manual_seed(3)
    state = build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 5).core().state_dict()
    path = tmp_path / "extra.pth"
    torch.save({**state, "extra.a": torch.zeros(1), "extra.b": torch.zeros(1), "extra.c": torch.zeros(1)}, path)
    with pytest.raises(ModelError) as err:
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(path)), 5)
    assert err.value.message.endswith("do not fit retinanet_tiny_fpn with 5 classes: 3 unexpected (e.g. "
                                      "['extra.a', 'extra.b'])")


def _v1_state(num_classes: int) -> dict:
    """A torchvision-layout RetinaNet R18 (v1: frozen BN when pretrained) with small running variances, so
    FrozenBatchNorm2d's eps (0 for the published v1 COCO weights, 1e-5 otherwise) changes the outputs."""
    torch.manual_seed(5)
    state = build_detector(ModelConfig(arch="retinanet_resnet18_fpn"), num_classes).core().state_dict()
    g = torch.Generator().manual_seed(6)
    return {k: (torch.rand(v.shape, generator=g) * 1e-3 + 1e-4 if k.endswith("running_var") else v.clone())
            for k, v in state.items()}


def test_file_whose_hash_matches_a_published_one_is_treated_as_that_enum(tmp_path, monkeypatch):
    _no_download(monkeypatch)
    state = _v1_state(91)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    enum_name = "RetinaNet_ResNet50_FPN_Weights.COCO_V1"  # the published v1 file whose BN eps is 0
    published = {"retinanet_resnet18_fpn": [Published(enum_name, f"r18_coco-{prefix}.pth", prefix, 91)]}
    monkeypatch.setattr(weights_mod, "published_weights", lambda builder: published.get(builder, []))
    monkeypatch.setattr(models, "_download_state_dict",
                        lambda enum, label: {k: v.clone() for k, v in state.items()})

    by_enum = build_detector(ModelConfig(arch="retinanet_resnet18_fpn", weights=enum_name), 91)
    by_file = build_detector(ModelConfig(arch="retinanet_resnet18_fpn", weights=str(path)), 91)
    frozen = [m for m in by_file.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 20 and all(m.eps == 0.0 for m in frozen)
    assert model_fingerprint(by_file) == model_fingerprint(by_enum)
    want = _outputs(by_enum)
    for got, ref in zip(_outputs(by_file), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)

    # the same file, not recognised (another published hash): the same tensors, but not that enum's BN eps
    other = "0" * 8 if not prefix.startswith("0" * 8) else "1" * 8
    published["retinanet_resnet18_fpn"] = [Published(enum_name, f"r18_coco-{other}.pth", other, 91)]
    unknown = build_detector(ModelConfig(arch="retinanet_resnet18_fpn", weights=str(path)), 91)
    assert model_fingerprint(unknown) == model_fingerprint(by_enum)
    assert all(m.eps == 1e-5 for m in unknown.modules() if isinstance(m, FrozenBatchNorm2d))
    assert not torch.allclose(_outputs(unknown)[-1], want[-1])


def test_a_published_file_of_another_class_count_is_refused_by_its_enum_name(tmp_path, monkeypatch):
    torch.manual_seed(3)
    path = tmp_path / "tiny.pth"
    _save_state(path, build_detector(ModelConfig(arch="retinanet_tiny_fpn"), 5).core())
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    monkeypatch.setattr(weights_mod, "published_weights",
                        lambda builder: [Published("Tiny_Weights.COCO_V1", f"t-{prefix}.pth", prefix, 91)])
    with pytest.raises(ModelError, match=r"predict 91 classes, the dataset has 5 .*label_map = 'category_id'") as err:
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(path)), 5)
    # right whether or not the recipe already maps by category id (a dataset of other categories, ids up to 4)
    assert "predict COCO's category ids 0..90: they need a dataset of COCO's categories" in err.value.hint


def test_published_weights_reads_the_hash_prefix_from_torchvisions_file_name():
    (rn50v2,) = weights_mod.published_weights("retinanet_resnet50_fpn_v2")
    assert rn50v2 == Published("RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1",
                               "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth", "5905b1c5", 91)
    assert weights_mod.published_weights("retinanet_tiny_fpn") == []
    assert weights_mod.published_weights("resnet18")[0].file_name == "resnet18-f37072fd.pth"


def _body_state(detector) -> dict:
    return {k.removeprefix("backbone.body."): v for k, v in detector.core().state_dict().items()
            if k.startswith("backbone.body.")}


def test_backbone_by_file_path_and_from_a_seeded_hub_cache_load_the_same_weights(tmp_path, monkeypatch):
    _no_download(monkeypatch)
    torch.manual_seed(7)
    imagenet = torchvision.models.resnet18()
    path = _save_state(tmp_path / "resnet18.pth", imagenet)
    by_path = build_detector(ModelConfig(arch="retinanet_resnet18_fpn", weights_backbone=path), 5)
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(Path(path).read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    # a random file cannot have the published hash: let the hub copy's digest begin with it
    real = weights_mod.sha256_file
    monkeypatch.setattr(weights_mod, "sha256_file",
                        lambda p, *a: "f37072fd" + real(p)[8:] if Path(p).parent == hub else real(p))
    by_enum = build_detector(ModelConfig(arch="retinanet_resnet18_fpn",
                                         weights_backbone="ResNet18_Weights.IMAGENET1K_V1"), 5)
    want = {k: v for k, v in imagenet.state_dict().items() if not k.startswith("fc.")}
    for got in (_body_state(by_path), _body_state(by_enum)):
        assert set(got) == {k for k in want if not k.endswith("num_batches_tracked")}
        for k, v in got.items():
            torch.testing.assert_close(v, want[k], rtol=0, atol=0)


def test_backbone_file_of_another_body_is_one_line_and_a_failed_download_names_both_offline_routes(
        tmp_path, monkeypatch):
    _no_download(monkeypatch)
    wrong = _save_state(tmp_path / "r34.pth", torchvision.models.resnet34())
    with pytest.raises(ModelError, match=r"^student\.weights_backbone '.*r34\.pth': does not fit torchvision's "
                                         r"resnet18: 80 unexpected \(e\.g\. \['layer1\.2\.conv1\.weight', "
                                         r"'layer1\.2\.bn1\.weight'\]\) \(expected the ImageNet") as err:
        build_detector(ModelConfig(arch="retinanet_resnet18_fpn", weights_backbone=wrong), 5, table="student")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cfg = ModelConfig(arch="retinanet_resnet18_fpn", weights_backbone="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ModelError, match=r"download failed .*pass the path of torchvision's file "
                                         r"resnet18-f37072fd\.pth instead, or put it in torch's hub cache") as err:
        build_detector(cfg, 5)
    # the folder itself, as TORCH_HOME makes it here (before: the literal "$TORCH_HOME/hub/checkpoints/")
    assert err.value.hint.endswith(f"put it in torch's hub cache {str(tmp_path / 'home' / 'hub' / 'checkpoints')!r}")
    hub = tmp_path / "home" / "hub" / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)  # the failed download made it
    (hub / "resnet18-f37072fd.pth").write_bytes(Path(wrong).read_bytes()[:4096])
    with pytest.raises(ModelError, match=r"ResNet18_Weights.IMAGENET1K_V1: the copy in torch's hub cache .* has a "
                                         r"sha256 beginning [0-9a-f]{8}, the published file's f37072fd: a truncated"):
        build_detector(cfg, 5)


def test_a_torchvision_file_teacher_is_fingerprinted_by_its_file_and_a_truncated_one_is_one_line(
        tmp_path, synth_root):
    torch.manual_seed(8)
    teacher = build_detector(ModelConfig(arch="retinanet_small_fpn", anchor_size=16), 5)
    path = _save_state(tmp_path / "small.pth", teacher.core())
    cfg = ModelConfig(arch="retinanet_small_fpn", anchor_size=16, weights=path)
    # what teacher-cache records and distill compares with the cache's: the file's bytes, nothing built
    assert teacher_fingerprint(cfg) == "file:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    cut = tmp_path / "small_cut.pth"
    cut.write_bytes(Path(path).read_bytes()[:5000])
    recipe = write_recipe(tmp_path / "r.toml", synth_root, weights=str(cut))
    result = CliRunner().invoke(app, ["teacher-cache", "-p", str(recipe), "--out", str(tmp_path / "c.zarr")])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"error: teacher.weights '{cut}': ")
    assert ("small_cut.pth': expected a torch checkpoint (a zip archive written by torch.save), got a damaged or "
            "truncated zip archive") in result.stderr
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize(("arch", "key", "enum", "message"), [
    ("retinanet_resnet50_fpn_v2", "weights", "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
     (r"torchvision publishes them for fasterrcnn_resnet50_fpn, not for retinanet_resnet50_fpn_v2 "
     r"\(retinanet_resnet50_fpn_v2's: RetinaNet_ResNet50_FPN_V2_Weights\.COCO_V1\)")),
    ("retinanet_resnet50_fpn_v2", "weights", "RetinaNet_ResNet50_FPN_Weights.COCO_V1",
     r"for retinanet_resnet50_fpn, not for retinanet_resnet50_fpn_v2"),
    ("retinanet_resnet50_fpn_v2", "weights", "ResNet50_Weights.IMAGENET1K_V1",
     (r"for resnet50, not for retinanet_resnet50_fpn_v2 \(an ImageNet classifier's weights: name them in "
     r"weights_backbone\)")),
    ("retinanet_resnet18_fpn", "weights", "RetinaNet_ResNet50_FPN_Weights.COCO_V1",
     r"not for retinanet_resnet18_fpn \(torchvision publishes no weights for retinanet_resnet18_fpn"),
    ("retinanet_resnet18_fpn", "weights_backbone", "ResNet50_Weights.IMAGENET1K_V1",
     r"for resnet50, not for resnet18 \(resnet18's: ResNet18_Weights\.IMAGENET1K_V1\)"),
    ("retinanet_resnet18_fpn", "weights_backbone", "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1",
     r"for retinanet_resnet50_fpn_v2, not for resnet18"),
])
def test_a_weights_enum_of_another_model_is_refused_before_any_download(monkeypatch, arch, key, enum, message):
    """An enum torchvision publishes for another builder than the arch's (or, as weights_backbone, than its
    body's): one line naming both, before any download (before: the file was downloaded, 100-170 MB, or offline
    the hint sent the user to find a file that would then be refused)."""
    _no_download(monkeypatch)
    with pytest.raises(ModelError, match=message):
        build_detector(ModelConfig(arch=arch, **{key: enum}), 91)


def test_a_download_through_a_network_that_never_answers_fails_in_one_line_after_the_timeout(tmp_path, monkeypatch):
    """A proxy or firewall that takes the connection and never answers (here a local socket that accepts and stays
    silent, as the HTTPS proxy): torch.hub sets no timeout, so the job waited for ever. Now the download fails after
    ``DOWNLOAD_TIMEOUT_S`` without news (1 s here), in the one line of a failed download, and the socket timeout is
    the process's own again after."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(models, "DOWNLOAD_TIMEOUT_S", 1.0)
    started = time.time()
    try:
        with pytest.raises(ModelError, match=r"ResNet18_Weights\.IMAGENET1K_V1: download failed \(.*timed out"):
            build_detector(ModelConfig(arch="retinanet_resnet18_fpn", weights_backbone="ResNet18_Weights.IMAGENET1K_V1"),
                           5)
    finally:
        server.close()
    assert time.time() - started < 30 and held  # it reached the silent proxy, and gave up on it
    assert socket.getdefaulttimeout() is None


def test_a_refused_weights_file_names_the_recipe_key_or_option_it_came_from(tmp_path, synth_root):
    """A recipe names two weights files: the error line says which one was refused (teacher.weights,
    student.weights), and eval, whose file comes from an option, names --checkpoint's file as a checkpoint (before:
    "weights '…'" for all of them)."""
    foreign, other = tmp_path / "foreign.pt", tmp_path / "other.pt"
    torch.save({"foo": 1}, foreign)
    torch.save({"foo": torch.zeros(1)}, other)
    recipe = write_recipe(tmp_path / "r.toml", synth_root)
    small = ["--set", "data.train=val", "--no-eval", "--device", "cpu"]
    result = CliRunner().invoke(app, ["train", "-p", str(recipe), "--role", "student", "--out", str(tmp_path / "s"),
                                      *small, "--set", f"student.weights={other}"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: student.weights '{other}': do not fit retinanet_tiny_fpn with 5 classes: "
                                    "109 missing"), result.stderr
    result = CliRunner().invoke(app, ["distill", "-p", str(recipe), "--online", "--out", str(tmp_path / "d"), *small,
                                      "--set", f"teacher.weights={foreign}"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: teacher.weights '{foreign}': expected an frs checkpoint"), result.stderr
    # a model file whose state lacks one tensor: eval's line names its option's file, not "weights"
    model = save_random_model(tmp_path / "model.pt", "retinanet_tiny_fpn", synth_root, anchor_size=16)
    ckpt = torch.load(model, weights_only=True)
    dropped = next(iter(ckpt["model"]))
    del ckpt["model"][dropped]
    torch.save(ckpt, model)
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(model), "--data", str(synth_root), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: checkpoint '{model}': do not fit retinanet_tiny_fpn with "
                                     f"{ckpt['num_classes']} classes: 1 missing (e.g. ['{dropped}']) (the weights must "
                                     "be of the recipe's arch, for the dataset's class count)")


def _module(state: dict) -> dict:
    return {f"module.{k}": v for k, v in state.items()}


TRAINING_SCRIPT_FILES = {  # layout -> (the file's content from a state dict, the INFO line's text after the label)
    "lightning": (lambda sd: {"state_dict": sd, "epoch": 3, "global_step": 12, "pytorch-lightning_version": "2.2.0"},
                  "took the weights from its 'state_dict' entry"),
    "reference_script": (lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 5},
                         "took the weights from its 'model' entry"),
    "ddp": (_module, "stripped the prefix 'module.' (DistributedDataParallel's) from every key"),
    "reference_script_ddp": (lambda sd: {"model": _module(sd), "epoch": 1},
                             ("took the weights from its 'model' entry and stripped the prefix 'module.' "
                              "(DistributedDataParallel's) from every key")),
}


@pytest.mark.parametrize("layout", list(TRAINING_SCRIPT_FILES))
def test_a_training_scripts_checkpoint_loads_the_state_dict_it_holds(layout, tmp_path, caplog):
    """The weights a training script saved beside its own entries (Lightning's 'state_dict', a reference script's
    'model' with its optimizer and epoch) or inside DistributedDataParallel ('module.' on every key) load as the
    state dict they are, with one INFO line saying so (before: refused as "another file")."""
    torch.manual_seed(3)
    original = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16), 5)
    state = {k: v.detach().clone() for k, v in original.core().state_dict().items()}
    wrap, note = TRAINING_SCRIPT_FILES[layout]
    path = tmp_path / "trained.ckpt"
    torch.save(wrap(state), path)
    with caplog.at_level("INFO", logger="frs_cli.models.weights"):
        loaded = build_detector(ModelConfig(arch="retinanet_tiny_fpn", anchor_size=16, weights=str(path)), 5,
                                table="teacher")
    assert [r.getMessage() for r in caplog.records if r.name == "frs_cli.models.weights"] == \
        [f"teacher.weights {str(path)!r}: {note}"]
    got = loaded.core().state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert model_fingerprint(loaded) == model_fingerprint(original)


def test_a_training_scripts_checkpoint_of_another_model_or_without_tensors_is_still_refused(tmp_path):
    """Unwrapped weights meet the same key and shape check as any state dict, and an entry that holds no tensors
    is refused naming what it holds."""
    path = tmp_path / "resnet.ckpt"
    torch.save({"model": torchvision.models.resnet18().state_dict(), "epoch": 2}, path)
    with pytest.raises(ModelError, match=r"^weights '.*resnet\.ckpt': do not fit retinanet_tiny_fpn with 5 classes: "
                                         r"\d+ missing .* \d+ unexpected \(e\.g\. \['conv1\.weight', 'bn1\.weight'\]\)"):
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(path)), 5)
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {"model": {"w": torch.zeros(1)}, "step": 3}, "epoch": 1}, nested)
    with pytest.raises(ModelError) as err:
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(nested)), 5)
    assert err.value.message == (f"weights {str(nested)!r}: expected an frs checkpoint (keys 'arch', 'model') or a "
                                 "torchvision state dict (a tensor per parameter name), got another file "
                                 "(['state_dict', 'epoch'])")
    assert err.value.hint == "its 'state_dict' entry holds keys ['model', 'step'], not a tensor per parameter name"
    both = _save_as(tmp_path / "both.ckpt", {"state_dict": {"w": torch.zeros(1)}, "model": {"w": torch.zeros(1)}})
    with pytest.raises(ModelError) as err:  # which of the two is meant is not clear: neither is guessed
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(both)), 5)
    assert err.value.hint == ("it holds both a 'state_dict' and a 'model' entry, so which holds the weights is not "
                              "clear: save the state dict alone")
    other = _save_as(tmp_path / "other.ckpt", {"foo": 1})
    with pytest.raises(ModelError) as err:  # the hint lists every layout that loads
        build_detector(ModelConfig(arch="retinanet_tiny_fpn", weights=str(other)), 5)
    assert err.value.hint == ("frs train / frs distill write the first; torchvision publishes the second; a training "
                              "script's checkpoint holding it as its one 'state_dict' or 'model' entry loads too")


def _save_as(path, obj):
    torch.save(obj, path)
    return path
