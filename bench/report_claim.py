"""Turn a claim run (bench/frs_claim.py output) into a markdown table and a PNG of val mAP against epoch.

    python3 bench/report_claim.py docs/results/claim_2026-11-26
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"a_alone": (90, 90, 90), "b_frs_cache": (214, 39, 40), "c_frs_online": (31, 119, 180),
           "d_gt_boxes": (44, 160, 44)}
LABELS = {"a_alone": "a student alone", "b_frs_cache": "b FRS from cache", "c_frs_online": "c FRS online",
          "d_gt_boxes": "d GT-box imitation"}


def table(summary: dict) -> str:
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    rows = ["| run | " + " | ".join(keys) + " | wall s | img/s per process |", "|---" * (len(keys) + 3) + "|"]
    for name, run in summary["runs"].items():
        final = run["final"]
        # None: no ground truth in that size range (pycocotools' -1), undefined rather than 0
        cells = ["\u2013" if final.get(k) is None else f"{100 * final[k]:.1f}" for k in keys]
        rows.append(f"| {name} | " + " | ".join(cells)
                    + f" | {run['seconds']:.0f} | {run['img_s']:.0f} |")
    return "\n".join(rows)


def plot(summary: dict, path: Path, size=(760, 440)) -> None:
    w, h = size
    left, right, top, bottom = 60, 200, 30, 50
    runs = {n: r["history"] for n, r in summary["runs"].items() if r.get("history")}
    epochs = max(e["epoch"] for hist in runs.values() for e in hist)
    top_ap = max(e["AP"] for hist in runs.values() for e in hist) * 100
    top_ap = max(1.0, (int(top_ap) // 2 + 1) * 2)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    x = lambda ep: left + (ep - 1) / max(1, epochs - 1) * (w - left - right)
    y = lambda ap: h - bottom - ap / top_ap * (h - top - bottom)
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for t in range(0, int(top_ap) + 1, 2):
        d.line([(left - 4, y(t)), (left, y(t))], fill="black")
        d.text((left - 28, y(t) - 6), f"{t}", fill="black")
    for ep in range(1, epochs + 1):
        d.text((x(ep) - 3, h - bottom + 6), str(ep), fill="black")
    d.text((w // 2 - 60, h - 22), "epoch", fill="black")
    d.text((8, top - 20), "val AP (%)", fill="black")
    teacher = summary["runs"]["teacher"]["final"]["AP"] * 100
    for xx in range(left, w - right, 8):
        d.line([(xx, y(teacher)), (xx + 4, y(teacher))], fill=(148, 103, 189))
    d.text((w - right + 10, y(teacher) - 6), f"teacher {teacher:.1f}", fill=(148, 103, 189))
    for i, (name, hist) in enumerate(sorted(runs.items())):
        kind, seed = name.rsplit("_s", 1)
        colour = COLOURS[kind]
        pts = [(x(e["epoch"]), y(100 * e["AP"])) for e in hist]
        d.line(pts, fill=colour, width=3 if seed == "0" else 1)
        d.text((w - right + 10, top + 16 * i), f"{LABELS[kind]} (seed {seed})", fill=colour)
    d.text((left, 6), f"{summary['device'][0]} x{len(summary['device'])}, {summary['date']}", fill="black")
    img.save(path)


if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    summary = json.loads((run_dir / "summary.json").read_text())
    print(table(summary))
    plot(summary, run_dir / "map_vs_epoch.png")
    print(f"wrote {run_dir / 'map_vs_epoch.png'}")
