"""Small ResNet-style bodies for CPU tests and the embedded demo (torchvision's blocks, narrow widths)."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock

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
