"""Where a recipe's dataset lives: its ``[data]`` table (COCO layout)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class DataConfig:
    root: str = "data"  # dataset root holding annotations/ and one image folder per split
    train: str = "train"  # training split name (images in ROOT/<train>/)
    val: str = "val"  # validation split name
    label_map: Literal["contiguous", "category_id"] = "contiguous"  # how category ids become labels

    def __post_init__(self):  # root = "~/coco": the home's, as a shell would read it (it does not inside a recipe)
        if isinstance(self.root, str) and self.root.startswith("~"):
            object.__setattr__(self, "root", os.path.expanduser(self.root))

    def annotation_file(self, split: str) -> Path:
        return Path(self.root) / "annotations" / f"instances_{split}.json"

    def image_dir(self, split: str) -> Path:
        return Path(self.root) / split
