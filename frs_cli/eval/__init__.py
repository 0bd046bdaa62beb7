"""Evaluation: COCO box mAP (``coco_eval``), the project's only use of pycocotools."""
