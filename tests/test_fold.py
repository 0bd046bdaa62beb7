"""models.fold: inference batch norms folded into the convolutions before them give the same outputs."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet, resnet18
from torchvision.ops import FrozenBatchNorm2d

from frs_cli.models import ModelConfig, build_detector
from frs_cli.models.fold import fold_batchnorm

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def randomise_norms(module: nn.Module, seed: int = 0) -> int:
    """Give every batch norm random statistics and affine values (so folding is not an identity); how many."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in module.modules() if isinstance(m, NORMS)]
    with torch.no_grad():
        for m in norms:
            c = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
    return len(norms)


def count(module: nn.Module, cls) -> int:
    return sum(isinstance(m, cls) for m in module.modules())


def check_fold(net: nn.Module, x: torch.Tensor, rtol=1e-4, atol=1e-5) -> int:
    """Fold ``net`` in place, asserting the output is unchanged and a second fold finds nothing; the count."""
    with torch.no_grad():
        before = net(x)
        folded = fold_batchnorm(net)
        after = net(x)
    torch.testing.assert_close(after, before, rtol=rtol, atol=atol)
    assert fold_batchnorm(net) == 0
    return folded


@pytest.mark.parametrize(("make", "groups"), [
    (lambda: resnet18(num_classes=10), 1),
    (lambda: ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4, width_per_group=8), 4),  # ResNeXt-style
], ids=["resnet18", "resnext_bottleneck"])
def test_resnets_fold_every_batch_norm_and_keep_their_output(make, groups):
    torch.manual_seed(0)
    net = make().eval().requires_grad_(False)
    n_bn = randomise_norms(net)
    assert n_bn > 0 and max(m.groups for m in net.modules() if isinstance(m, nn.Conv2d)) == groups
    assert check_fold(net, torch.randn(2, 3, 64, 64)) == n_bn
    assert count(net, nn.BatchNorm2d) == 0
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None and not c.bias.requires_grad and not c.weight.requires_grad for c in convs)


def test_frozen_batch_norm_in_a_sequential_is_folded_with_its_eps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), FrozenBatchNorm2d(8, eps=0.1), nn.ReLU())
    randomise_norms(net)
    weight = net[0].weight
    assert check_fold(net, torch.randn(2, 3, 16, 16)) == 1
    assert isinstance(net[1], nn.Identity) and net[0].weight is weight  # the same Parameter, rewritten in place


def test_batch_norm_without_affine_folds_and_requires_grad_is_kept():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6, eps=0.3, affine=False)
    net = nn.Sequential(conv, bn).eval()
    randomise_norms(net)
    assert bn.weight is None and conv.weight.requires_grad
    assert check_fold(net, torch.randn(1, 4, 9, 9)) == 1
    assert isinstance(conv.bias, nn.Parameter) and conv.bias.requires_grad and conv.weight.requires_grad


def test_batch_norm_in_training_mode_is_not_folded():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)).eval()
    net[1].train()
    bn, weight = net[1], net[0].weight.detach().clone()
    assert fold_batchnorm(net) == 0
    assert net[1] is bn and net[0].bias is None and torch.equal(net[0].weight, weight)


def test_norms_not_known_to_follow_a_conv_are_left_alone():
    class ConvThenReluThenBn(nn.Module):  # attributes conv, bn, but relu runs between them
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)

        def forward(self, x):
            return self.bn(torch.relu(self.conv(x)))

    class Reversed(nn.Sequential):  # a Sequential whose forward is not Sequential's
        def forward(self, x):
            return self[0](self[1](x))

    cases = [
        nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3)),  # norm before the conv
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8)),
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, track_running_stats=False)),  # batch statistics
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8)),  # not directly after
        ConvThenReluThenBn(),
        Reversed(nn.BatchNorm2d(8), nn.Conv2d(3, 8, 3)),
    ]
    for net in cases:
        net.eval()
        before = copy.deepcopy(net.state_dict())
        kinds = [type(m) for m in net.modules()]
        assert fold_batchnorm(net) == 0, net
        assert [type(m) for m in net.modules()] == kinds
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_resnet_stem_inside_a_detection_body_is_folded():
    torch.manual_seed(0)
    body = IntermediateLayerGetter(resnet18(), {"layer2": "0"}).eval()
    n_bn = randomise_norms(body)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = body(x)["0"]
        assert fold_batchnorm(body) == n_bn
        after = body(x)["0"]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert isinstance(body.bn1, nn.Identity)


def test_tiny_detector_features_and_logits_are_unchanged_by_folding():
    torch.manual_seed(0)
    det = build_detector(ModelConfig(arch="retinanet_tiny_fpn"), num_classes=3).eval().requires_grad_(False)
    n_bn, n_gn = randomise_norms(det), count(det, nn.GroupNorm)
    assert n_bn > 0 and n_gn > 0  # BN in the body, GroupNorm in the v2 head
    folded = copy.deepcopy(det)
    assert fold_batchnorm(folded) == n_bn
    assert count(folded, NORMS) == 0 and count(folded, nn.GroupNorm) == n_gn
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        ref = det(images, [(64, 64), (64, 48)], detect=False)
        out = folded(images, [(64, 64), (64, 48)], detect=False)
    for got, want in [*zip(out.features, ref.features, strict=True), *zip(out.cls_logits, ref.cls_logits, strict=True)]:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_the_live_teacher_and_teacher_cache_fold_alike_to_the_same_numbers(recipe):
    """Both teacher paths fold: ``OnlineTeacher`` and teacher-cache's ``TeacherPass`` give bit-identical float32
    features and masks for a batch of one canvas, and no inference batch norm is left in either teacher."""
    from frs_cli.cache.encoding import FeatureEncoding
    from frs_cli.cache.teacher_pass import PassOptions, TeacherPass
    from frs_cli.data.coco import CocoViews, collate
    from frs_cli.train.objectives import OnlineTeacher

    coco = CocoViews.from_config(recipe.data, "train", recipe.geometry)
    keys = [(0, "orig"), (0, "hflip"), (1, "orig"), (1, "hflip")]  # the tiny split's first plan batch: one canvas
    batch = collate([coco[k] for k in keys])
    assert len({g.padded_size for g in batch.geometries}) == 1
    teacher = build_detector(recipe.teacher, coco.index.num_classes).eval().requires_grad_(False)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    live = OnlineTeacher(copy.deepcopy(teacher), autocast=False)
    run = TeacherPass(copy.deepcopy(teacher), FeatureEncoding("float32"), PassOptions()).prepare()
    assert bns > 0
    for model in (live.teacher, run.teacher):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        want = live(batch, need_logits=True)
        got = run(batch.images, batch.image_sizes)
        plain = teacher(batch.images, batch.image_sizes, detect=False).features
    n = len(want.features)
    for f, g in zip(want.features, got[:n]):
        assert torch.equal(f, g)
    for m, g in zip(want.masks, got[n:]):
        assert torch.equal(m.half(), g)
    assert any(not torch.equal(f, p) for f, p in zip(want.features, plain))  # folding did change the rounding
