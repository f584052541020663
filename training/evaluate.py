"""`python -m training evaluate CKPT`: the test-set bound and −L_k (models/bounds.py) in nats, for captions
models the caption fidelity (training/fidelity.py), for grey-image generators (Fashion-MNIST) sample and
reconstruction quality (training/quality.py), for set models (Omniglot) few-shot accuracy on the test
characters and on MNIST (training/fewshot.py), and for text models the PTB test NLL and perplexity or, on the
caption language, the share of samples alignDRAW can draw."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import CheckpointError, load_checkpoint
from training.config import ConfigError
from training.device import resolve_device
from training.likelihood import Journal, elbo_terms, nll_k, subset

MNIST = ("binarized-mnist", "mnist")  # the datasets whose L_k is per image (--per-image, --resume)


def main(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, 0)
    if (Path(args.checkpoint) / "last").is_dir() and not (Path(args.checkpoint) / "checkpoint.json").exists():
        raise CheckpointError(f"{args.checkpoint} is a training run: evaluate its best/ or last/")
    ckpt = load_checkpoint(args.checkpoint, device=device)
    model = ckpt.model.eval()
    results: dict[str, Any] = {"checkpoint": str(Path(args.checkpoint).resolve()), "k": args.k}
    dataset = ckpt.extra.get("dataset")
    if (args.resume or args.time_limit is not None) and dataset not in MNIST:
        raise ConfigError(f"--resume and --time-limit are for MNIST models' L_k; {args.checkpoint} is of {dataset}")
    if (args.resume or args.time_limit is not None) and not args.per_image:
        raise ConfigError("--resume and --time-limit need --per-image: the file the images measured are kept in")
    if args.per_image and dataset not in MNIST:  # it would be ignored, and no file written
        raise ConfigError(f"--per-image is for MNIST models' L_k; {args.checkpoint} is of {dataset}"
                          + (": --per-sentence writes its sentences" if dataset == "ptb" else ""))
    if getattr(args, "per_sentence", None) and dataset != "ptb":
        raise ConfigError(f"--per-sentence is for Penn Treebank text models; {args.checkpoint} is of {dataset}"
                          + (": --per-image writes its images" if dataset in MNIST else ""))
    if dataset in MNIST:
        from training.data.binarized import dynamic_binarize, load_binarized_mnist
        from training.data.mnist import load_mnist

        if dataset == "binarized-mnist":
            x = torch.from_numpy(load_binarized_mnist("test", root=args.data_dir)).float().view(-1, 1, 28, 28)
        else:
            grey = torch.from_numpy(load_mnist("test", root=args.data_dir).images).float().div(255)
            x = dynamic_binarize(grey.view(-1, 1, 28, 28), torch.Generator().manual_seed(0))
        data = {"x": x[: args.limit] if args.limit else x}
        test = elbo_terms(model, data)
        chosen = subset(len(data["x"]), args.lk_images)
        # test-set indices in --per-image: two models' files pair up image by image (`python -m training paired`)
        journal = None
        if args.per_image:
            assert ckpt.weights_sha256 is not None, "load_checkpoint names the weights it loaded"
            journal = Journal(args.per_image, chosen.tolist(), source=ckpt.weights_sha256,
                              resume=args.resume)
        deadline = None if args.time_limit is None else time.monotonic() + 60 * args.time_limit
        lk = nll_k(model, {"x": data["x"][chosen]}, args.k, chunk=args.chunk, journal=journal,
                   stop=None if deadline is None else lambda: time.monotonic() > deadline)
        partial = f"partial_L{args.k}" in lk  # the first images of a sorted set, not a random subset: nothing carries
        if partial:
            print(f"--time-limit {args.time_limit:g} min: L_{args.k} stopped after {lk[f'partial_L{args.k}']}; the "
                  "same command with --resume goes on", file=sys.stderr)
        if (lk[f"images_L{args.k}"] < test["images"] and not partial
                and not getattr(model, "bound_is_approximate", False)):
            # L_k on every image costs k passes each; the paired gap from a random subset carries it to all of them
            # (not from an approximate bound such as AVB's through T: nothing carries from it)
            lk[f"nll_L{args.k}_estimate_all"] = test["nll_bound"] - lk[f"gap_L{args.k}"]
        results["test"] = test | lk
        active = getattr(model, "active_units", None)
        if callable(active):  # A_u = Cov_x E_q[u | x] > 1e-2 (Burda et al. §5.2), per stochastic layer
            counts, variances = active(data["x"].to(device))
            results["test"]["active_units"] = list(counts)
            results["test"]["active_units_threshold"] = 1e-2
        if args.pictures:
            save_pictures(model, data["x"], Path(args.pictures))
    elif dataset == "fashion-mnist":
        results |= evaluate_grey(model, args, device)
    elif dataset == "omniglot":
        results |= evaluate_sets(model, args)
    elif dataset == "ptb":
        results |= evaluate_ptb(model, args)
    elif dataset == "captions-text":
        results |= evaluate_caption_texts(ckpt, args)
    else:
        from training.fidelity import evaluate_captions

        results |= evaluate_captions(ckpt, k=args.k, limit=args.limit, data_dir=args.data_dir,
                                     lk_images=args.lk_images or 100, temperatures=args.temperatures)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:  # its folder made: hours of L_k are not lost to a missing /tmp/... at the end
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


def evaluate_grey(model: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Fashion-MNIST test set: the objective's bound and terms; then `--samples` prior samples (seeds 0..n−1) and
    the deterministic reconstructions of every test image, judged by training/quality.py against the test images
    with the shipped Fashion-MNIST classifier; the training images' own distance to the test set is the floor.
    With --pictures DIR: samples.png, reconstructions.png (test images above their reconstructions), walk.png."""
    from models.sampling import prior_images, reconstructions
    from training.classifier import FASHION_CLASSIFIER, load_classifier
    from training.data.mnist import load_mnist
    from training.quality import diversity, generation_report

    def grey(split: str) -> torch.Tensor:
        images = load_mnist(split, root=args.data_dir, dataset="fashion-mnist").images
        return torch.from_numpy(images).float().div(255).view(-1, 1, 28, 28)

    x = grey("test")[: args.limit] if args.limit else grey("test")
    out: dict[str, Any] = {"test": elbo_terms(model, {"x": x})}
    n_samples = args.samples or 10_000
    samples = prior_images(model, n_samples)
    recons = reconstructions(model, x)
    judge = load_classifier(FASHION_CLASSIFIER, device)
    # the training split's first images (never the test set) against the test images: the floor of the FD
    quality = generation_report(samples=samples, reconstructions=recons, originals=x, test_images=x, classifier=judge,
                                floor_images=grey("train")[: len(x)])
    collapse = diversity(samples[:1000], x[:1000])  # pairwise distances: 1,000 of each keeps it to 8 MB
    quality |= {"sample_spread": collapse["spread"], "sample_near_duplicates": collapse["near_duplicates"]}
    out["quality"] = quality | {"sample_seeds": f"0..{n_samples - 1}", "classifier": FASHION_CLASSIFIER.name}
    if args.pictures:
        save_pictures(model, x, Path(args.pictures), samples=samples[:64], reconstructions=recons[:32])
    return out


def save_pictures(model: Any, x: torch.Tensor, pictures: Path, *, samples: torch.Tensor | None = None,
                  reconstructions: torch.Tensor | None = None) -> None:
    """The card's pictures of a one-step image family: samples.png (64 prior samples, seeds 0..63),
    reconstructions.png (rows of 8 test images above their reconstructions, when the family reconstructs) and
    walk.png (latent walks between seeds, when it walks). Drawn here unless the caller has them."""
    from models.sampling import sample, seed_walks
    from training import artefacts

    pictures.mkdir(parents=True, exist_ok=True)
    if samples is None:
        samples = sample(model, seeds=list(range(64)), keep_canvases=False).images.cpu()
    artefacts.save_sample_grid(pictures / "samples.png", samples[:64])
    rows = min(4, len(x) // 8)  # rows of 8 originals, each above its reconstructions
    if reconstructions is None and "images" in model.modes and rows:
        reconstructions = sample(model, images=x[: 8 * rows], keep_canvases=False).images.cpu()
    if reconstructions is not None and rows:
        c, h, w = x.shape[1:]
        pairs = torch.stack([x[: 8 * rows].view(rows, 8, c, h, w),
                             reconstructions[: 8 * rows].view(rows, 8, c, h, w)], 1)
        artefacts.save_sample_grid(pictures / "reconstructions.png", pairs.view(16 * rows, c, h, w))
    if "walk" in model.modes:
        artefacts.save_canvas_strip(pictures / "walk.png", seed_walks(model).cpu(), max_columns=10)


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


def _texts(ckpt: Any, tokens: torch.Tensor) -> list[str]:
    """Token rows (N, L) -> each row's words up to <eos>, in the data's spelling (models/vocab.py sentence)."""
    return [ckpt.vocab.sentence(row) for row in tokens.tolist()]


def _text_diagnostics(model: Any, x: torch.Tensor, lengths: torch.Tensor, mi_batch: int) -> dict[str, Any]:
    """The −ELBO and its terms per sentence (one z each, seed 0), active units (threshold 0.01) and I_q."""
    terms = elbo_terms(model, {"x": x, "lengths": lengths})
    counts, _ = model.active_units(x, lengths)
    batch = min(mi_batch, len(x))
    return {"neg_elbo": terms["nll_bound"], "reconstruction": terms.get("reconstruction"), "kl": terms.get("kl"),
            "active_units": int(sum(counts)), "active_units_threshold": 1e-2,
            "mutual_information": model.mutual_information(x, lengths, batch_size=batch,
                                                           generator=torch.Generator().manual_seed(0)),
            "mutual_information_batch": batch}


def evaluate_ptb(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Penn Treebank test sentences (all 3,761, or the first --limit): each sentence's NLL by importance sampling
    with k = --k (−L_k, models/bounds.py through nll_k; exact for a model without z, whose L_1 is log p(x)),
    PPL = exp(Σ NLL / Σ (words + 1)) (training/data/ptb.py `perplexity`: <eos> counted, <bos> not), the −ELBO
    (and the PPL it bounds), KL, active units and I_q. Sentences go through L_k in blocks of similar length, each
    block cut to its longest sentence and seeded by its index (the model is padding-invariant: tested)."""
    from training.data.ptb import perplexity, ptb_corpus

    test = ptb_corpus(args.data_dir).splits["test"]
    n = min(args.limit or len(test), len(test))
    x, lengths = test.tokens[:n], test.lengths[:n]
    tokens = int(lengths.sum())  # = count_tokens of the sentences: Σ (words + 1)
    exact = getattr(model, "latent", True) is False  # no z: every log-weight is log p(x), L_1 is exact
    k = 1 if exact else args.k
    lk = torch.empty(n, dtype=torch.float64)
    elbo_k = torch.empty(n, dtype=torch.float64)
    order = lengths.argsort(stable=True)
    block = 100
    for b, lo in enumerate(range(0, n, block)):
        rows = order[lo : lo + block]
        longest = int(lengths[rows].max())
        per: dict[str, torch.Tensor] = {}
        nll_k(model, {"x": x[rows, :longest], "lengths": lengths[rows]}, k, seed=b, chunk=args.chunk,
              progress=False, per_example=per)
        lk[rows], elbo_k[rows] = per["lk"], per["mean_log_weight"]
    nll = -lk
    out: dict[str, Any] = {
        "dataset": "ptb", "split": "test", "sentences": n, "tokens": tokens, "k": k, "nll_exact": exact,
        "nll": nll.mean().item(), "nll_stderr": (nll.std() / n**0.5).item() if n > 1 else 0.0,
        "ppl": perplexity(nll.sum().item(), tokens),
        "neg_elbo_k_samples": -elbo_k.mean().item()}
    out |= _text_diagnostics(model, x, lengths, args.mi_batch)
    out["neg_elbo_ppl"] = perplexity(out["neg_elbo"] * n, tokens)  # the bound's perplexity: above the PPL
    if args.per_sentence:
        rows_ = ["index,tokens,nll,neg_elbo_k_samples"] + [
            f"{i},{int(lengths[i])},{nll[i].item()!r},{-elbo_k[i].item()!r}" for i in range(n)]
        Path(args.per_sentence).parent.mkdir(parents=True, exist_ok=True)  # as --json's: hours of L_k are not lost
        Path(args.per_sentence).write_text("\n".join(rows_) + "\n")
    return {"text": out}


def caption_shares(texts: list[str], languages: list[str], training: set[str]) -> dict[str, Any]:
    """What share of generated captions alignDRAW can draw: `in_vocabulary` (every word in the vocabulary of one
    language's alignDRAW), `well_formed` (one of its 8 templates filled with that language's names,
    training/data/captions.py `parse`), `novel` (not a caption of the training corpus), `well_formed_novel`, and
    `held_out` (a held-out combination: never in training); with the distinct counts."""
    from training.data import captions as cap
    from training.data import fashion as fa

    names = {"mnist": cap.DIGIT_NAMES, "fashion": fa.FASHION_NAMES}
    words = {"mnist": set(cap.CAPTION_WORDS), "fashion": set(fa.FASHION_WORDS)}
    parsed = []
    in_vocab = []
    for text in texts:
        tokens = text.split()
        in_vocab.append(bool(tokens) and any(set(tokens) <= words[lang] for lang in languages))
        parsed.append(next((c for lang in languages if (c := cap.parse(text, names=names[lang])) is not None), None))
    n = max(1, len(texts))
    well = [c is not None for c in parsed]
    novel = [t not in training for t in texts]
    held = [c is not None and c.banned for c in parsed]
    return {"count": len(texts), "distinct": len(set(texts)), "in_vocabulary": sum(in_vocab) / n,
            "well_formed": sum(well) / n, "novel": sum(novel) / n,
            "well_formed_novel": sum(w and v for w, v in zip(well, novel, strict=True)) / n,
            "held_out": sum(held) / n, "held_out_distinct": len({t for t, h in zip(texts, held, strict=True) if h})}


# The card's example path of each caption language: between two captions of its first template, fixed beforehand
PATH_ENDS = {
    "mnist": ("the digit 3 is at the top left of the image .", "the digit 8 is at the bottom right of the image ."),
    "fashion": ("the shirt is at the top left of the image .", "the bag is at the bottom right of the image ."),
}


@torch.no_grad()
def evaluate_caption_texts(ckpt: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A text VAE of the caption language: `--samples` prior samples (z from seeds 0..n−1; default 1,000), decoded
    greedily and by sampling at temperature 1 (generator seed 0), judged by caption_shares; on the validation
    captions (rebuilt from the checkpoint's corpus seed; --limit caps them): reconstruction accuracy (the greedy
    decoding of the posterior mean equals the caption exactly), the −ELBO, KL, active units and I_q; and whether z
    matters: the distinct greedy decodings of the prior samples and of one posterior sample per validation caption
    (all alike is the collapse that greedy decoding hides)."""
    from models.sampling import draw_noise, lerp
    from models.vocab import tokenize
    from training.data.caption_texts import caption_texts
    from training.tasks import VAL_SEED

    model = ckpt.model
    cfg, extra = ckpt.training.get("config", {}), ckpt.extra
    corpus = caption_texts(cfg["pairs_per_epoch"], cfg["val_size"], seed=extra["corpus_seed"], val_seed=VAL_SEED,
                           root=args.data_dir or cfg.get("data_dir"))
    if corpus.sha256 != extra.get("corpus_sha256"):
        raise ConfigError(f"the rebuilt caption corpus differs from the checkpoint's (sha256 {corpus.sha256[:12]} "
                          f"vs {str(extra.get('corpus_sha256'))[:12]}): sources now {corpus.sources}, at training "
                          f"{extra.get('sources')}")
    itos = ckpt.vocab.written  # the data's spelling, as the corpus writes its captions
    training = {" ".join(s) for s in corpus.train}
    device = next(model.parameters()).device
    n = args.samples or 1000
    z = draw_noise(n, *model.noise_shape(), seeds=list(range(n))).to(device)
    decoded = {"greedy": model.decode(z, strategy="greedy"),
               "sampled": model.decode(z, strategy="sample", temperature=1.0,
                                       generator=torch.Generator().manual_seed(0))}
    samples = {name: caption_shares(_texts(ckpt, tokens.cpu()), corpus.languages, training)
               for name, tokens in decoded.items()}
    stoi = {w: i for i, w in enumerate(itos) if i > 0}
    from training.data.ptb import encode

    valid = encode(corpus.valid[: args.limit] if args.limit else corpus.valid, stoi)
    x, lengths = valid.tokens, valid.lengths
    recon = [text for i in range(0, len(x), 500)  # texts per chunk: each chunk's tokens are as long as its longest
             for text in _texts(ckpt, next(iter(model.generate(z[:1], texts=x[i : i + 500],
                                                               lengths=lengths[i : i + 500]))).tokens.cpu())]
    exact = [a == b for a, b in zip(recon, _texts(ckpt, x), strict=True)]
    mu, log_sigma = model.posterior_params(x[:n].to(device), lengths[:n].to(device))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(1)).to(device)
    posterior = _texts(ckpt, model.decode(mu + log_sigma.exp() * eps, strategy="greedy").cpu())
    distinct_prior, distinct_posterior = samples["greedy"]["distinct"], len(set(posterior))
    ends = [PATH_ENDS[lang] for lang in corpus.languages][:1] or [PATH_ENDS["mnist"]]
    encoded = encode([[t.text for t in tokenize(c)] for c in ends[0]], stoi)
    means = model.encode_noise(encoded.tokens.to(device), encoded.lengths.to(device))
    examples = {"greedy_prior_samples": _texts(ckpt, decoded["greedy"][:8].cpu()),
                "path": {"from": ends[0][0], "to": ends[0][1], "points": 8,
                         "texts": _texts(ckpt, model.decode(lerp(means[0], means[1], 8), strategy="greedy").cpu())}}
    return {"text": {
        "dataset": "captions-text", "languages": corpus.languages, "samples": n, "sample_seeds": f"0..{n - 1}",
        "prior_samples": samples, "validation_captions": len(x),
        "reconstruction_accuracy": sum(exact) / max(1, len(exact)),
        "distinct_greedy_prior": distinct_prior, "distinct_greedy_posterior": distinct_posterior,
        "posterior_samples": len(posterior), "z_matters": distinct_prior > 1 and distinct_posterior > 1,
        "examples": examples,
        **_text_diagnostics(model, x, lengths, args.mi_batch)}}
