import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.folder import CocoCaptions, JsonlCaptions
from training.data.mnist import DatasetError


def png(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    return {
        "red": png(tmp_path / "img" / "red.png", (64, 48), (255, 0, 0)),
        "grey": png(tmp_path / "img" / "grey.png", (10, 20), 128, mode="L"),
        "rgba": png(tmp_path / "img" / "sub" / "blue.png", (32, 32), (0, 0, 255, 100), mode="RGBA"),
    }


def check_item(item, caption):
    img, cap = item
    assert isinstance(img, torch.Tensor) and img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert cap == caption
    return img


def test_jsonl_captions(tmp_path, images):
    lines = [
        {"image": "img/red.png", "caption": "a red square"},
        {"image": str(images["grey"]), "caption": "grey"},
        {"image": "img/sub/blue.png", "caption": "blue"},
    ]
    p = tmp_path / "list.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = JsonlCaptions(p)
    assert len(ds) == 3 and ds.captions == ["a red square", "grey", "blue"]
    red = check_item(ds[0], "a red square")
    assert torch.allclose(red[0], torch.ones(32, 32)) and red[1:].abs().max() == 0
    grey = check_item(ds[1], "grey")
    assert torch.allclose(grey, torch.full_like(grey, 128 / 255))
    blue = check_item(ds[2], "blue")
    assert torch.allclose(blue[2], torch.ones(32, 32))
    batch_images, batch_captions = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch_images.shape == (3, 3, 32, 32) and list(batch_captions) == ds.captions


def test_jsonl_errors_name_the_line(tmp_path, images):
    p = tmp_path / "list.jsonl"
    p.write_text(json.dumps({"image": "img/red.png", "caption": "ok"}) + "\n"
                 + json.dumps({"image": "img/nope.png", "caption": "missing"}) + "\n")
    with pytest.raises(DatasetError, match=r"list\.jsonl:2: image .*nope\.png not found"):
        JsonlCaptions(p)
    p.write_text('{"image": "img/red.png"}\n')
    with pytest.raises(DatasetError, match=r"list\.jsonl:1: expected"):
        JsonlCaptions(p)
    p.write_text(json.dumps({"image": "img/red.png", "caption": "ok"}) + "\n{oops\n")
    with pytest.raises(DatasetError, match=r"list\.jsonl:2: invalid JSON"):
        JsonlCaptions(p)
    p.write_text(json.dumps({"image": "img/red.png", "caption": "ok"}) + "\n")
    ds = JsonlCaptions(p)
    images["red"].unlink()
    with pytest.raises(DatasetError, match=r"list\.jsonl:1: image .*red\.png not found"):
        ds[0]


def test_coco_captions(tmp_path, images):
    ann = {
        "images": [{"id": 7, "file_name": "red.png"}, {"id": 9, "file_name": "grey.png"}],
        "annotations": [
            {"id": 1, "image_id": 7, "caption": "A red thing. "},
            {"id": 2, "image_id": 9, "caption": "grey"},
            {"id": 3, "image_id": 7, "caption": "still red"},
        ],
    }
    p = tmp_path / "captions_train.json"
    p.write_text(json.dumps(ann))
    ds = CocoCaptions(p, tmp_path / "img")
    assert len(ds) == 3
    a = check_item(ds[0], "A red thing.")
    b = check_item(ds[2], "still red")
    assert torch.equal(a, b)
    check_item(ds[1], "grey")
    ann["annotations"].append({"id": 4, "image_id": 11, "caption": "x"})
    p.write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match="annotation 3 .*image_id 11"):
        CocoCaptions(p, tmp_path / "img")
    ann["annotations"].pop()
    ann["images"].append({"id": 11, "file_name": "gone.png"})
    ann["annotations"].append({"id": 5, "image_id": 11, "caption": "x"})
    p.write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match=r"annotation 3 \(id 5.*gone\.png not found"):
        CocoCaptions(p, tmp_path / "img")


def test_resize_keeps_content(tmp_path):
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, 32:] = 255  # right half white
    path = tmp_path / "half.png"
    Image.fromarray(arr).save(path)
    (tmp_path / "l.jsonl").write_text(json.dumps({"image": "half.png", "caption": "half"}))
    img, _ = JsonlCaptions(tmp_path / "l.jsonl")[0]
    assert img[:, :, :15].max() == 0 and img[:, :, 17:].min() == 1
