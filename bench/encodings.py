"""What each cache encoding costs in bytes and in loss accuracy, on a trained teacher's real features.

For val images of an ``frs demo`` run (trained teacher, trained students), the teacher's fp32 features are
stored in each encoding (float16, bfloat16, int8 and packed int6/int5/int4 with per-channel scales), read
back, and used the way distillation uses a cache: the teacher head recomputes the logits from the stored
features, and L_FPN and L_head are computed for a student. The relative error of each loss against fp32
targets is reported for the FRS-trained student (close to the teacher: the hard case for L_FPN) and the plain
student. Bytes per view are measured with each compressor (none, zstd, blosc + bit-shuffle) on the same
arrays, and projected to an 800x1333 COCO view (P3-P7, 256 channels, stored bytes per value of the encoding:
b/8 for the packed ones) with the measured compression ratio. Candidates that are not cache formats (b-bit
codes with a scale per channel and grid row) are measured beside them, without a codec. CPU only. Example:

    frs demo --out /tmp/demo && python3 bench/encodings.py --demo /tmp/demo --out docs/results/encodings.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from numcodecs import Blosc, Zstd

from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.data.coco import CocoViews, collate
from frs_cli.data.config import DataConfig
from frs_cli.data.geometry import GeometryConfig
from frs_cli.losses import FeatureAdapter, feature_loss, frs_masks, head_loss
from frs_cli.train.checkpoint import load_detector

ENCODINGS = ("float32", "float16", "bfloat16", "int8", "int6", "int5", "int4")
CODECS = {"none": None, "zstd": Zstd(level=3), "blosc": Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)}
COCO_POSITIONS = sum(-(-800 // s) * -(-1344 // s) for s in (8, 16, 32, 64, 128))  # padded 800x1344, P3-P7
COCO_ROWS = sum(-(-800 // s) for s in (8, 16, 32, 64, 128))  # grid rows of those levels
ROW_SCALED = (6, 5, 4)  # candidates, not a cache format: b-bit codes with a scale per channel and grid row


def row_scaled(f: torch.Tensor, bits: int) -> torch.Tensor:
    """What b-bit codes with one absmax scale per view, channel and grid row would decode to (float16)."""
    qmax = 2 ** (bits - 1) - 1
    scale = f.abs().amax(dim=-1, keepdim=True) * (1.0 / qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(f / scale).clamp(-qmax, qmax) * scale).half()


def stored_bytes(arrays: list[np.ndarray], codec) -> int:
    return sum(a.nbytes if codec is None else len(codec.encode(np.ascontiguousarray(a))) for a in arrays)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, required=True, help="an `frs demo --out` directory")
    p.add_argument("--images", type=int, default=64, help="val images (orig view)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.manual_seed(0)
    teacher, ckpt = load_detector(args.demo / "teacher" / "model_final.pt")
    teacher.eval()
    recipe = json.loads((args.demo / "teacher" / "recipe.json").read_text())
    geometry = GeometryConfig(**recipe["geometry"])
    ds = CocoViews.from_config(DataConfig(root=str(args.demo / "data")), "val", geometry)
    batch = collate([ds[(i, "orig")] for i in range(min(args.images, len(ds)))])
    head = teacher.cls_head()
    students = {}
    for name in ("student_frs", "student_plain"):
        student, _ = load_detector(args.demo / name / "model_final.pt")
        phi = FeatureAdapter([lv.channels for lv in student.levels], [lv.channels for lv in teacher.levels])
        if (args.demo / name / "adapters.pt").exists():
            phi.load_state_dict(torch.load(args.demo / name / "adapters.pt", weights_only=True)["adapters"])
        students[name] = (student.eval(), phi)

    with torch.no_grad():
        ref = teacher(batch.images, batch.image_sizes, detect=False)
        masks = [m.half().float() for m in frs_masks(ref.cls_logits)]  # masks are always stored as float16
        outs = {n: (s(batch.images, batch.image_sizes, detect=False), phi) for n, (s, phi) in students.items()}

        def losses(features):
            logits = head(features)
            return {n: {"L_FPN": float(feature_loss(phi(o.features), features, masks)),
                        "L_head": float(head_loss(o.cls_logits, logits, masks))} for n, (o, phi) in outs.items()}

        exact = losses([f.float() for f in ref.features])
        rows = {}
        for enc in ENCODINGS:
            encoding = FeatureEncoding(enc)
            coded = [encoding.encode(f) for f in ref.features]  # per level ((B, C', H, W), (B, C) or None)
            got = losses([encoding.decode(d, s).float() for d, s in coded])
            coded = [(encoding.to_numpy(d), None if s is None else s.numpy()) for d, s in coded]
            per_view = {}
            positions = sum(f.shape[-2] * f.shape[-1] for f in ref.features)
            per_value = sum(d.nbytes for d, _ in coded) / sum(f.numel() for f in ref.features)  # packed: bits / 8
            scales = [sc for _, sc in coded if sc is not None]  # (B, C) per level, scaled encodings only
            for cname, codec in CODECS.items():
                feats = stored_bytes([d[i] for d, _ in coded for i in range(len(d))], codec)
                ratio = feats / sum(d.nbytes for d, _ in coded)  # features only, so it scales to COCO size
                scale_bytes = stored_bytes([sc[i] for sc in scales for i in range(len(sc))], codec)
                coco = COCO_POSITIONS * 256 * per_value * ratio + (5 * 256 * 4 if scales else 0)
                per_view[cname] = {"bytes_per_view": (feats + scale_bytes) / len(batch.image_ids),
                                   "feature_ratio": ratio, "coco_800x1333_mb_per_view": coco / 1e6}
            rows[enc] = {
                "bytes_per_position": sum(d.nbytes for d, _ in coded) / len(batch.image_ids) / positions,
                "bytes_per_value": per_value,
                "codecs": per_view,
                "relative_error": {n: {k: abs(got[n][k] - exact[n][k]) / abs(exact[n][k]) for k in exact[n]}
                                   for n in exact},
            }
        candidates = {}
        for bits in ROW_SCALED:
            got = losses([row_scaled(f, bits).float() for f in ref.features])
            coco = COCO_POSITIONS * 256 * bits / 8 + COCO_ROWS * 256 * 4  # packed codes, float32 row scales
            candidates[f"int{bits}_row_scales"] = {
                "coco_800x1333_mb_per_view": coco / 1e6,
                "relative_error": {n: {k: abs(got[n][k] - exact[n][k]) / abs(exact[n][k]) for k in exact[n]}
                                   for n in exact},
            }
    result = {"date": time.strftime("%Y-%m-%d"), "device": "cpu", "teacher": ckpt["arch"],
              "images": len(batch.image_ids), "size": recipe["geometry"], "exact_losses": exact, "encodings": rows,
              "candidates": candidates}
    print(f"{len(batch.image_ids)} val views, teacher {ckpt['arch']}; losses with fp32 targets: {exact}")
    print(f"{'encoding':9} {'codec':6} {'ratio':>6} {'COCO MB/view':>12} {'max rel. err L_FPN':>19} {'max rel. err L_head':>19}")
    for enc, r in rows.items():
        e_fpn = max(v["L_FPN"] for v in r["relative_error"].values())
        e_head = max(v["L_head"] for v in r["relative_error"].values())
        for cname, c in r["codecs"].items():
            print(f"{enc:9} {cname:6} {c['feature_ratio']:6.3f} {c['coco_800x1333_mb_per_view']:12.2f} {e_fpn:19.2e} {e_head:19.2e}")
    print("candidates, not cache formats (no codec):")
    for name, c in candidates.items():
        e_fpn = max(v["L_FPN"] for v in c["relative_error"].values())
        e_head = max(v["L_head"] for v in c["relative_error"].values())
        print(f"{name:16} {'':6} {c['coco_800x1333_mb_per_view']:12.2f} {e_fpn:19.2e} {e_head:19.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
