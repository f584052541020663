"""`python -m training evaluate CKPT`: the test-set bound and −L_k (models/bounds.py) in nats, for captions
models the caption fidelity (training/fidelity.py), for grey-image generators (Fashion-MNIST) sample and
reconstruction quality (training/quality.py), and for set models (Omniglot) few-shot accuracy on the test
characters and on MNIST (training/fewshot.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_checkpoint
from training.device import resolve_device
from training.likelihood import elbo_terms, nll_k, subset


def main(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, 0)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    model = ckpt.model.eval()
    results: dict[str, Any] = {"checkpoint": str(Path(args.checkpoint).resolve()), "k": args.k}
    dataset = ckpt.extra.get("dataset")
    if dataset in ("binarized-mnist", "mnist"):
        from training.data.binarized import dynamic_binarize, load_binarized_mnist
        from training.data.mnist import load_mnist

        if dataset == "binarized-mnist":
            x = torch.from_numpy(load_binarized_mnist("test", root=args.data_dir)).float().view(-1, 1, 28, 28)
        else:
            grey = torch.from_numpy(load_mnist("test", root=args.data_dir).images).float().div(255)
            x = dynamic_binarize(grey.view(-1, 1, 28, 28), torch.Generator().manual_seed(0))
        data = {"x": x[: args.limit] if args.limit else x}
        test = elbo_terms(model, data)
        lk = nll_k(model, {"x": data["x"][subset(len(data["x"]), args.lk_images)]}, args.k, chunk=args.chunk)
        if lk[f"images_L{args.k}"] < test["images"]:
            # L_k on every image costs k passes each; the paired gap from a random subset carries it to all of them
            lk[f"nll_L{args.k}_estimate_all"] = test["nll_bound"] - lk[f"gap_L{args.k}"]
        results["test"] = test | lk
        active = getattr(model, "active_units", None)
        if callable(active):  # A_u = Cov_x E_q[u | x] > 1e-2 (Burda et al. §5.2), per stochastic layer
            counts, variances = active(data["x"].to(device))
            results["test"]["active_units"] = list(counts)
            results["test"]["active_units_threshold"] = 1e-2
    elif dataset == "fashion-mnist":
        results |= evaluate_grey(model, args, device)
    elif dataset == "omniglot":
        results |= evaluate_sets(model, args)
    else:
        from training.fidelity import evaluate_captions

        results |= evaluate_captions(ckpt, k=args.k, limit=args.limit, data_dir=args.data_dir,
                                     lk_images=args.lk_images or 100, temperatures=args.temperatures)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


FASHION_CLASSIFIER = Path(__file__).resolve().parents[1] / "checkpoints" / "fashion-classifier"


def evaluate_grey(model: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Fashion-MNIST test set: the objective's bound and terms; then `--samples` prior samples (seeds 0..n−1) and
    the deterministic reconstructions of every test image, judged by training/quality.py against the test images
    with the shipped Fashion-MNIST classifier; the training images' own distance to the test set is the floor.
    With --pictures DIR: samples.png, reconstructions.png (test images above their reconstructions), walk.png."""
    from models.sampling import sample, seed_walks
    from training import artefacts
    from training.classifier import load_classifier
    from training.data.mnist import load_mnist
    from training.quality import diversity, generation_report

    def grey(split: str) -> torch.Tensor:
        images = load_mnist(split, root=args.data_dir, dataset="fashion-mnist").images
        return torch.from_numpy(images).float().div(255).view(-1, 1, 28, 28)

    x = grey("test")[: args.limit] if args.limit else grey("test")
    out: dict[str, Any] = {"test": elbo_terms(model, {"x": x})}
    chunk = 500
    samples = torch.cat([sample(model, seeds=list(range(i, min(i + chunk, args.samples))), keep_canvases=False)
                         .images.cpu() for i in range(0, args.samples, chunk)])
    recons = torch.cat([sample(model, images=x[i : i + chunk], keep_canvases=False).images.cpu()
                        for i in range(0, len(x), chunk)])
    judge = load_classifier(FASHION_CLASSIFIER, device)
    # the training split's first images (never the test set) against the test images: the floor of the FD
    quality = generation_report(samples=samples, reconstructions=recons, originals=x, test_images=x, classifier=judge,
                                floor_images=grey("train")[: len(x)])
    collapse = diversity(samples[:1000], x[:1000])  # pairwise distances: 1,000 of each keeps it to 8 MB
    quality |= {"sample_spread": collapse["spread"], "sample_near_duplicates": collapse["near_duplicates"]}
    out["quality"] = quality | {"sample_seeds": f"0..{args.samples - 1}", "classifier": FASHION_CLASSIFIER.name}
    if args.pictures:
        pictures = Path(args.pictures)
        pictures.mkdir(parents=True, exist_ok=True)
        artefacts.save_sample_grid(pictures / "samples.png", samples[:64])
        pairs = torch.stack([x[:32].view(4, 8, 1, 28, 28), recons[:32].view(4, 8, 1, 28, 28)], 1).view(64, 1, 28, 28)
        artefacts.save_sample_grid(pictures / "reconstructions.png", pairs)
        artefacts.save_canvas_strip(pictures / "walk.png", seed_walks(model).cpu(), max_columns=10)
    return out


FEW_SHOT = ((5, 1), (5, 5), (20, 1), (20, 5))  # Omniglot tasks (way, shot) of the paper's table
MNIST_FEW_SHOT = ((10, 1), (10, 5))


def evaluate_sets(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Omniglot's test characters (the Vinyals split's 423 × 4 rotations, never read by training): the dataset
    ELBO on seeded sets of the training set size, and few-shot accuracy over `--episodes` seeded episodes (seed 0,
    one query per class); then the same on MNIST test digits (10-way), a dataset the model never saw.
    With --pictures DIR: test-samples.png and mnist-samples.png, rows of 5 examples then 10 new samples."""
    from models.sampling import sample
    from training import artefacts
    from training.data import omniglot as om
    from training.fewshot import few_shot

    test = om.load_split("test", root=args.data_dir, radii=(0,))
    size = int(model.config.sample_size)
    sets = om.make_sets(test, size, torch.Generator().manual_seed(0), dilation=False).x
    sets = sets[: args.limit] if args.limit else sets
    terms = elbo_terms(model, {"x": sets})
    terms |= {"sets": terms.pop("images"), "set_size": size, "nll_bound_per_image": terms["nll_bound"] / size}
    classes = om.class_images(test, torch.Generator().manual_seed(0))
    mnist, mnist_source = om.mnist_few_shot(20, torch.Generator().manual_seed(0), root=args.data_dir)
    runs = {"omniglot_test": [few_shot(model, classes, w, k, episodes=args.episodes).to_dict() for w, k in FEW_SHOT],
            "mnist": [few_shot(model, mnist, w, k, episodes=args.episodes).to_dict() for w, k in MNIST_FEW_SHOT]}
    out: dict[str, Any] = {"test sets": terms, "few_shot": runs | {
        "split_sha256": test.split_sha256, "classes": len(test), "mnist_source": mnist_source,
        "mnist_per_class": 20, "protocol": "nearest class by KL(q(c | query) || q(c | support)); one query per class "
                                           "per episode; standard error over episodes"}}
    if args.pictures:
        pictures = Path(args.pictures)
        pictures.mkdir(parents=True, exist_ok=True)
        for name, data in (("test-samples.png", classes[:: len(classes) // 8][:8]), ("mnist-samples.png", mnist)):
            support = data[:, :5]  # (rows, 5, C, H, W): the examples the model sees
            new = sample(model, seeds=list(range(10 * len(data))), keep_canvases=False,
                         sets=support.repeat_interleave(10, 0)).images.cpu().view(len(data), 10, *data.shape[2:])
            artefacts.save_sample_grid(pictures / name, torch.cat([support, new], 1).flatten(0, 1), columns=15)
    return out
