"""Image/caption datasets from folders: COCO-style captions JSON and a simple JSONL list.

Each item is `(image, caption)`: image a float32 tensor (3, size, size) in [0, 1] (RGB, resized with Pillow's
bilinear filter, which antialiases when shrinking; aspect ratio is not kept, as in the alignDRAW 32x32 COCO set),
caption a str. Every reference is checked when the dataset is built, so a missing image fails early with a
message naming the JSONL line or the COCO annotation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .mnist import DatasetError


def load_image(path: str | Path, size: int = 32) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]."""
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


class _CaptionFiles(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[Path, str, str]], size: int):
        self.items = items  # (image path, caption, where it was declared)
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        path, caption, where = self.items[i]
        try:
            return load_image(path, self.size), caption
        except FileNotFoundError:
            raise DatasetError(f"{where}: image {path} not found") from None
        except OSError as e:
            raise DatasetError(f"{where}: cannot read image {path}: {e}") from e

    @property
    def captions(self) -> list[str]:
        return [c for _, c, _ in self.items]


class JsonlCaptions(_CaptionFiles):
    """One JSON object per line: {"image": path, "caption": text}; relative paths are resolved against the
    JSONL file's folder. Blank lines are skipped."""

    def __init__(self, jsonl_path: str | Path, *, size: int = 32, check_files: bool = True):
        jsonl_path = Path(jsonl_path)
        base = jsonl_path.parent
        items: list[tuple[Path, str, str]] = []
        with jsonl_path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{jsonl_path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{where}: invalid JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) or not isinstance(
                    rec.get("caption"), str
                ):
                    raise DatasetError(f'{where}: expected {{"image": str, "caption": str}}; got {line.strip()[:200]}')
                path = Path(rec["image"])
                if not path.is_absolute():
                    path = base / path
                if check_files and not path.is_file():
                    raise DatasetError(f"{where}: image {path} not found")
                items.append((path, rec["caption"], where))
        super().__init__(items, size)


class CocoCaptions(_CaptionFiles):
    """COCO captions annotations (`captions_*.json`: "images" with id/file_name, "annotations" with
    image_id/caption); one item per annotation, image files in `image_dir`."""

    def __init__(self, annotations_json: str | Path, image_dir: str | Path, *, size: int = 32,
                 check_files: bool = True):
        annotations_json, image_dir = Path(annotations_json), Path(image_dir)
        try:
            data = json.loads(annotations_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{annotations_json}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DatasetError(f"{annotations_json}: expected a COCO captions file with 'images' and 'annotations'")
        files = {img["id"]: img["file_name"] for img in data["images"]}
        items: list[tuple[Path, str, str]] = []
        for k, ann in enumerate(data["annotations"]):
            where = f"{annotations_json}: annotation {k} (id {ann.get('id')}, image_id {ann.get('image_id')})"
            if ann.get("image_id") not in files:
                raise DatasetError(f"{where}: image_id not listed in 'images'")
            path = image_dir / files[ann["image_id"]]
            if check_files and not path.is_file():
                raise DatasetError(f"{where}: image {path} not found")
            items.append((path, str(ann["caption"]).strip(), where))
        super().__init__(items, size)
