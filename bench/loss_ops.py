"""Count the ATen ops and host syncs (nonzero) per image of RetinaNet's GT loss: torchvision's and ours, batched.

Every such op is a kernel launch on a GPU, and every nonzero a host sync: torchvision's per-image loop is
what bounds one training process at small image sizes. CPU only; prints one line per implementation. Example:

    python3 bench/loss_ops.py --images 64 --size 192
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torchvision.models.detection.image_list import ImageList

from frs_cli.data.coco import CocoViews, collate
from frs_cli.data.config import DataConfig
from frs_cli.data.geometry import GeometryConfig
from frs_cli.data.synth import SynthConfig, generate
from frs_cli.models import ModelConfig, build_detector
from frs_cli.models.retinanet import to_head_layout
from frs_cli.models.retinanet_loss import retinanet_gt_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--arch", default="retinanet_resnet18_fpn_v2")
    args = p.parse_args()
    root = tempfile.mkdtemp() + "/data"
    generate(root, SynthConfig(train=args.images, val=1, size=args.size))
    ds = CocoViews.from_config(DataConfig(root=root), "train", GeometryConfig(args.size, args.size, 32))
    b = collate([ds[(i, "orig")] for i in range(args.images)])
    d = build_detector(ModelConfig(arch=args.arch, anchor_size=16), 5).train()
    with torch.no_grad():
        x = d.normalize(b.images, b.image_sizes)
        feats = list(d.core().backbone(x).values())
        reg = d.core().head.regression_head
        heads = {"cls_logits": to_head_layout(d.cls_head()(feats), 5),
                 "bbox_regression": to_head_layout([reg.bbox_reg(reg.conv(f)) for f in feats], 4)}
        anchors = d.core().anchor_generator(ImageList(x, b.image_sizes), feats)
        impls = {
            "torchvision compute_loss": lambda: d.core().compute_loss(b.targets, heads, anchors),
            "frs batched loss": lambda: retinanet_gt_loss(d.core(), b.targets, heads["cls_logits"],
                                                          heads["bbox_regression"], anchors[0]),
        }
        for name, fn in impls.items():
            fn()  # warm-up
            t = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                losses = fn()
            seconds = time.perf_counter() - t
            events = prof.key_averages()
            ops = sum(e.count for e in events if e.key.startswith("aten::"))
            syncs = sum(e.count for e in events if e.key == "aten::nonzero")
            print(f"{name}: {args.arch}, {args.images} images of {args.size} px: {ops / args.images:.1f} ATen ops "
                  f"and {syncs / args.images:.2f} nonzero (host syncs on a GPU) per image; "
                  f"{1000 * seconds:.0f} ms on this CPU; losses "
                  + ", ".join(f"{k} {v.item():.6f}" for k, v in losses.items()))


if __name__ == "__main__":
    main()
