"""The classifiers that judge samples: MNIST digits (caption fidelity) and Fashion-MNIST items (sample quality).

The MNIST one reads the 28×28 window a caption names. It is trained here with random shifts of up to ±3 px
(placements in MNIST with Captions jitter by up to 4 px) and shipped in `checkpoints/mnist-classifier/`.
The Fashion-MNIST one, same network, ships in `checkpoints/fashion-classifier/`; its `penultimate` (128-d
activations) feed the Fréchet distance of training/quality.py (no Inception weights here, so no FID).
Both are safetensors + JSON, like every other checkpoint.

    python -m training.classifier --out checkpoints/mnist-classifier [--epochs 3]
    python -m training.classifier --dataset fashion-mnist --out checkpoints/fashion-classifier --epochs N
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm


@dataclass(frozen=True)
class Dataset:
    kind: str  # checkpoint.json "kind"
    max_shift: int  # training augmentation, ±px


DATASETS = {
    "mnist": Dataset("mnist-classifier", 3),
    # Items are centred and fill the frame: ±2 px tolerates a generator's slight misplacement without cutting off
    # as many sleeves and soles as MNIST's ±3 px would.
    "fashion-mnist": Dataset("fashion-classifier", 2),
}


# The shipped Fashion-MNIST judge: the grey families' validation and test Fréchet distance (ours) read its features.
FASHION_CLASSIFIER = Path(__file__).resolve().parents[1] / "checkpoints" / "fashion-classifier"


class DigitClassifier(nn.Module):
    """(B, 1, 28, 28) in [0, 1] -> logits (B, 10). Reads MNIST digits or Fashion-MNIST items, per its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def penultimate(self, x: Tensor) -> Tensor:
        """(B, 1, 28, 28) -> (B, 128): the activations after the head's first Linear and its ReLU."""
        return self.head[:-1](self.features(x))


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ±max_shift pixels, filling with background (0)."""
    padded = F.pad(x, (max_shift,) * 4)
    b = x.shape[0]
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator))
    rows = dy[:, None] + torch.arange(28)
    cols = dx[:, None] + torch.arange(28)
    idx = torch.arange(b)[:, None, None]
    return padded[:, 0][idx, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def save_classifier(model: DigitClassifier, directory: Path, metrics: dict, *, dataset: str = "mnist") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    # MNIST manifests predate the "dataset" field (absent means mnist) and stay byte for byte as they were.
    where = {} if dataset == "mnist" else {"dataset": dataset}
    (directory / "checkpoint.json").write_text(json.dumps(
        {"format": "glimpse-classifier/1", "kind": DATASETS[dataset].kind, **where, "metrics": metrics,
         "weights_sha256": digest}, indent=2) + "\n")


def load_classifier(directory: str | Path, device: str | torch.device = "cpu") -> DigitClassifier:
    directory = Path(directory)
    manifest = json.loads((directory / "checkpoint.json").read_text())
    kinds = [d.kind for d in DATASETS.values()]
    if manifest.get("kind") not in kinds:
        raise ValueError(f"{directory}: kind {manifest.get('kind')!r} is not a classifier ({', '.join(kinds)})")
    digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    if digest != manifest["weights_sha256"]:
        raise ValueError(f"{directory}/model.safetensors does not match its checkpoint.json sha256")
    state = load_file(str(directory / "model.safetensors"), device=str(device))
    model = DigitClassifier()
    model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 1000) -> float:
    correct = sum((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
                  for i in range(0, len(labels), batch))
    return correct / len(labels)


def train_classifier(images: Tensor, labels: Tensor, *, epochs: int = 3, seed: int = 0,
                     max_shift: int = 3) -> DigitClassifier:
    """images (N, 1, 28, 28) in [0, 1], labels (N,)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=g)
        bar = tqdm(range(0, len(labels), 128), desc=f"classifier epoch {epoch + 1}", leave=False)
        for i in bar:
            idx = order[i : i + 128]
            loss = F.cross_entropy(model(random_shift(images[idx], max_shift, g)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def main() -> None:
    from training.data.mnist import load_mnist

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Default None, read as mnist: an MNIST run's recorded command stays as it was before this flag.
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="default: mnist")
    parser.add_argument("--out", default="checkpoints/mnist-classifier")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    dataset = args.dataset or "mnist"
    shift = DATASETS[dataset].max_shift
    train = load_mnist("train", root=args.data_dir, dataset=dataset)
    test = load_mnist("test", root=args.data_dir, dataset=dataset)
    x = torch.from_numpy(train.images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(train.labels).long()
    start = time.perf_counter()
    model = train_classifier(x, y, epochs=args.epochs, max_shift=shift)
    xt = torch.from_numpy(test.images).float().div(255).unsqueeze(1)
    yt = torch.from_numpy(test.labels).long()
    g = torch.Generator().manual_seed(1)
    metrics = {
        "test_accuracy": accuracy(model, xt, yt),
        f"test_accuracy_shifted_{shift}px": accuracy(model, random_shift(xt, shift, g), yt),
        "train_source": train.source, "epochs": args.epochs, "wall_seconds": round(time.perf_counter() - start, 1),
        "command": "python -m training.classifier " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                 for k, v in vars(args).items() if v is not None),
    }
    save_classifier(model, Path(args.out), metrics, dataset=dataset)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
