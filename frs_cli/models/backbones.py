"""ResNet bodies under torchvision's FPN: torchvision's ResNets, and small ones for CPU tests and the demo."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from frs_cli.errors import ModelError
from frs_cli.models.weights import state_mismatch, without_batch_counts

STYLES = ("pytorch", "caffe")  # where a bottleneck's stride sits: the 3x3 conv (pytorch) or the first 1x1 (caffe)

# name -> (stage widths, blocks per stage)
TINY_BODIES = {
    "tiny": ((16, 32, 64, 128), (1, 1, 1, 1)),
    "small": ((32, 64, 128, 256), (2, 2, 2, 2)),
}


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    layers = []
    for i in range(blocks):
        s = stride if i == 0 else 1
        down = None
        if s != 1 or in_ch != out_ch:
            down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=s, bias=False), nn.BatchNorm2d(out_ch))
        layers.append(BasicBlock(in_ch, out_ch, stride=s, downsample=down))
        in_ch = out_ch
    return nn.Sequential(*layers)


class TinyResNet(nn.Module):
    """A ResNet body of stride 32: stem (/4), layer1 (/4), layer2 (/8), layer3 (/16), layer4 (/32).

    Child names match torchvision's ResNet so the same FPN extractor (``layer2..layer4``) applies.
    """

    def __init__(self, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)):
        super().__init__()
        w0 = widths[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, w0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
            nn.Conv2d(w0, w0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
        )
        self.layer1 = _stage(w0, widths[0], blocks[0], 1)
        self.layer2 = _stage(widths[0], widths[1], blocks[1], 2)
        self.layer3 = _stage(widths[1], widths[2], blocks[2], 2)
        self.layer4 = _stage(widths[2], widths[3], blocks[3], 2)
        self.out_channels = widths[1:]

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))


class P6P7(ExtraFPNBlock):
    """The two extra FPN levels P6, P7 (3x3 convs of stride 2), with the source and activation as a parameter.

    ``from_c5``: P6 from the last backbone stage (mmdetection's ``add_extra_convs='on_input'``, RetinaNet)
    rather than from P5 (``'on_output'``: FCOS, GFL). ``relu``: a ReLU between P6 and P7 (torchvision's
    ``LastLevelP6P7`` always has one; mmdetection only with ``relu_before_extra_convs``, as its FCOS).
    Parameter names are torchvision's (``p6``, ``p7``).
    """

    def __init__(self, in_channels: int, out_channels: int, from_c5: bool, relu: bool):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.from_c5, self.relu = from_c5, relu

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(c[-1] if self.from_c5 else p[-1])
        p7 = self.p7(F.relu(p6) if self.relu else p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


def to_caffe_style(net: nn.Module) -> None:
    """Move each strided bottleneck's stride from its 3x3 conv to its first 1x1 conv (the "caffe" ResNet of
    Detectron's ImageNet weights, which mmdetection's FCOS configs start from). Weights are unchanged."""
    for block in net.modules():
        if isinstance(block, Bottleneck) and block.conv2.stride != (1, 1):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def resnet_fpn(body: str, fpn_channels: int, returned_layers: list[int], extra_blocks: Callable[[], nn.Module], *,
               frozen_bn: bool = False, weights=None, trainable_layers: int = 5, fpn_norm=None,
               style: str = "pytorch") -> BackboneWithFPN:
    """A ResNet body (torchvision's by name, or a key of ``TINY_BODIES``) under torchvision's FPN.

    ``returned_layers`` are ResNet stages (1 = stride 4 ... 4 = stride 32); FPN outputs are named "0", "1", ...
    in that order, then the extra blocks'. Stages outside the last ``trainable_layers`` are frozen, as
    torchvision does for pretrained bodies. ``frozen_bn`` uses ``FrozenBatchNorm2d`` (pretrained v1 models).
    ``weights`` (torchvision bodies only): None or the state dict of its ImageNet weights (enum or file).
    ``extra_blocks`` makes the FPN's extra levels; it is called where earlier versions built them (after a
    tiny body, before a torchvision one), so a seeded random init stays what it was. ``style`` is one of
    ``STYLES`` (``caffe``: bottleneck bodies only, see ``to_caffe_style``).
    """
    if style not in STYLES or (style == "caffe" and body in TINY_BODIES):
        raise ModelError(f"backbone: expected a style in {STYLES} (caffe for bottleneck ResNets), got {style!r} "
                         f"for {body}")
    if body in TINY_BODIES:
        widths, blocks = TINY_BODIES[body]
        net = TinyResNet(widths, blocks)
        extra = extra_blocks()
        stage_channels = list(widths)
    else:
        extra = extra_blocks()
        net = _resnet(body, weights, FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
        if style == "caffe":
            to_caffe_style(net)
        c2 = net.inplanes // 8  # 256 for bottleneck bodies, 64 for basic-block ones
        stage_channels = [c2 * 2**i for i in range(4)]
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers] + (["bn1"] if trainable_layers == 5 else [])
        for name, p in net.named_parameters():
            if not any(name.startswith(layer) for layer in train):
                p.requires_grad_(False)
    return BackboneWithFPN(net, {f"layer{k}": str(i) for i, k in enumerate(returned_layers)},
                           [stage_channels[k - 1] for k in returned_layers], fpn_channels,
                           extra_blocks=extra, norm_layer=fpn_norm)


def _resnet(body: str, weights, norm_layer) -> nn.Module:
    """torchvision's ResNet ``body``; ``weights`` (None: random init) is its state dict, checked key by key
    against the body (ModelError naming what does not fit)."""
    net = getattr(resnet, body)(weights=None, norm_layer=norm_layer)
    if weights is None:
        return net
    expected = net.state_dict()
    detail = state_mismatch(expected, dict(weights))
    if detail:
        raise ModelError(f"weights_backbone: the file does not fit torchvision's {body}: {detail}",
                         hint=f"expected the ImageNet weights of {body} (its classifier 'fc' included)")
    net.load_state_dict(without_batch_counts(dict(weights), expected))
    return net


def c5_channels(body: str) -> int:
    """Channels of the stride-32 stage (where torchvision's v2 heads take P6 from)."""
    if body in TINY_BODIES:
        return TINY_BODIES[body][0][3]
    return 512 if body in ("resnet18", "resnet34") else 2048
