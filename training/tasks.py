"""What a (model, dataset) pair needs from the loop: a model config, batches per epoch, a fixed validation set,
and conditions for preview samples. Batches are dicts: `x` plus the model's conditions (`captions`, `lengths`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from models.aligndraw import AlignDRAWConfig
from models.family import family
from models.vocab import Vocabulary, normalise
from training import fidelity as fi
from training.batching import Batch, batches, epoch_seed
from training.config import ConfigError, TrainConfig

__all__ = ["Batch", "Task", "batches", "epoch_seed", "make_task"]

VAL_SEED = 1_000_003  # the validation set is generated once from held-out digits with this seed
VAL_FD_SAMPLES = 2000  # prior samples (seeds 0..1999) per epoch for the grey families' validation FD (ours)


@dataclass
class Task:
    config: TrainConfig
    vocab: Vocabulary | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # stored in the checkpoint (e.g. banned combinations)

    def model_config(self) -> Any:
        """The family's Config for this data (with --set overrides)."""
        raise NotImplementedError

    def checked_model_config(self) -> Any:
        """model_config(), where a --set value of the right type that the family's own checks refuse (k = 0, a
        field the task sets itself) is a ConfigError naming it, not a traceback."""
        try:
            return self.model_config()
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.config.model}'s config: {e}") from e

    def train_data(self, epoch: int) -> Batch:
        """The whole epoch's data as tensors (N, ...), in training order."""
        raise NotImplementedError

    def val_data(self) -> Batch:
        raise NotImplementedError

    def preview_conditions(self) -> dict[str, Tensor]:
        return {}

    def preview_labels(self) -> list[str]:
        return []

    def text(self, ids: Any) -> str:
        """Word ids -> text (text families' previews): the vocabulary's words, padding dropped."""
        assert self.vocab is not None
        return self.vocab.decode(ids.tolist() if isinstance(ids, Tensor) else ids)

    def epoch_metrics(self, model: Any) -> dict[str, float]:
        """Task-specific numbers measured on the model after each epoch (rank 0 only; the model in eval mode)."""
        return {}

    def pixel_means(self) -> Tensor:
        """(C, H, W) mean of the training images: families that start their output bias from it (IWAE)."""
        return self.train_data(1)["x"].float().mean(0)


def with_word_ids(overrides: dict[str, Any], vocab: Vocabulary) -> dict[str, Any]:
    """alignDRAW overrides with key_blind's words as vocabulary ids: --set key_blind='["0","1"]' names words as a
    user would (ids pass through; one word or id need not be in a list). vocab_size is the vocabulary's own."""
    if "vocab_size" in overrides:
        raise ValueError(f"vocab_size is the dataset vocabulary's size ({len(vocab)} words): leave it out of --set")
    if "key_blind" not in overrides:
        return dict(overrides)
    words = overrides["key_blind"]
    ids = []
    for word in words if isinstance(words, list | tuple) else [words]:
        if not isinstance(word, int):
            if str(word) not in vocab:
                raise ValueError(f"key_blind: {word!r} is not a word of this dataset's vocabulary {vocab.words}")
            [word] = vocab.encode(str(word))
        ids.append(word)
    return dict(overrides) | {"key_blind": tuple(ids)}


class CaptionsTask(Task):
    """MNIST with Captions (alignDRAW §4.1) or its Fashion-MNIST variant."""

    def __init__(self, config: TrainConfig):
        from training.data import captions as cap
        from training.data.mnist import load_mnist, split_validation

        fashion = config.dataset == "fashion-captions"
        digits = load_mnist("train", root=config.data_dir, dataset="fashion-mnist" if fashion else "mnist",
                            download=config.download)
        self.train_digits, self.val_digits = split_validation(digits, n_val=min(10_000, len(digits.labels) // 6))
        if fashion:
            from training.data import fashion as fa

            self._generate: Callable[..., cap.CaptionedBatch] = fa.generate_fashion
            words = fa.FASHION_WORDS
        else:
            self._generate = cap.generate
            words = cap.CAPTION_WORDS
        vocab = Vocabulary(words, max_length=16)
        if fashion:
            held_out = fa.fashion_held_out_captions(cap.DEFAULT_BANNED)
        else:
            held_out = cap.held_out_captions(cap.DEFAULT_BANNED)
        super().__init__(config, vocab, {
            "dataset": config.dataset,
            "digits_source": digits.source,
            "banned": list(cap.DEFAULT_BANNED),
            "held_out_captions": held_out,
        })
        self._val_batch = self._generate(self.val_digits, config.val_size, generator=VAL_SEED)
        self._val = self._tensors(self._val_batch)
        seen = [vocab.decode(row.tolist()) for row in self._val["captions"][:8]]
        self._preview = seen + held_out[:: max(1, len(held_out) // 8)][:8]  # seen, then held out across templates
        self.extra["example_captions"] = list(dict.fromkeys(seen))  # shown to users as examples, each once

    def _tensors(self, batch: Any) -> Batch:
        assert self.vocab is not None
        ids, lengths = self.vocab.encode_batch(batch.captions)
        return {"x": batch.images, "captions": torch.tensor(ids), "lengths": torch.tensor(lengths)}

    def model_config(self) -> Any:
        assert self.vocab is not None
        cls = family(self.config.model).Config
        return cls(vocab_size=len(self.vocab), **with_word_ids(self.config.model_overrides, self.vocab))

    def train_data(self, epoch: int) -> Batch:
        seed = epoch_seed(self.config.seed, epoch)
        return self._tensors(self._generate(self.train_digits, self.config.pairs_per_epoch, generator=seed))

    def val_data(self) -> Batch:
        return self._val

    def preview_conditions(self) -> dict[str, Tensor]:
        assert self.vocab is not None
        ids, lengths = self.vocab.encode_batch(self._preview)
        return {"captions": torch.tensor(ids), "lengths": torch.tensor(lengths)}

    def preview_labels(self) -> list[str]:
        return self._preview

    def epoch_metrics(self, model: Any) -> dict[str, float]:
        """Caption fidelity (training/fidelity.py) on validation digits, so a run shows progress toward the target
        and not only the bound, and the share of word attention on digit words; needs the shipped digit judge,
        which reads MNIST digits only."""
        n = self.config.fidelity_samples
        if n <= 0 or self.config.dataset != "mnist-captions" or not (fi.CLASSIFIER / "checkpoint.json").exists():
            return {}
        judge, splits = self._judging
        assert self.vocab is not None
        out = {}
        for split, batch in splits.items():
            judged = fi.sample_and_judge(model, self.vocab, batch, judge)
            out[f"val_fidelity_{split}"] = judged.fidelity
            out[f"val_attention_digit_words_{split}"] = fi.attention_shares(judged.alignments,
                                                                            batch.captions)["digit_words"]
        return out

    @cached_property
    def _judging(self) -> tuple[Any, dict[str, Any]]:
        """The digit judge and the judged captions (seen: the first validation pairs; held out: only banned
        combinations, from the same validation digits), built once per run on first use."""
        from training.classifier import load_classifier
        from training.data import captions as cap
        from training.fidelity import CLASSIFIER

        n = self.config.fidelity_samples
        return load_classifier(CLASSIFIER), {
            "seen": self._val_batch.subset(slice(0, n)),
            "held_out": cap.generate(self.val_digits, n, generator=VAL_SEED + 1, held_out_only=True)}


class ImagesTask(Task):
    """Images without captions: binarized MNIST, either the fixed Larochelle split or dynamic binarisation of MNIST,
    or Fashion-MNIST as grey levels in [0, 1], never binarised. MNIST and Fashion-MNIST hold out their last
    `val_holdout` training images for validation (dynamic MNIST binarises them once); the official test images are
    left to `evaluate`. Grey runs also log after each epoch whether 256 samples still differ from one another
    (training/quality.py `diversity`), the collapse check a GAN needs."""

    def __init__(self, config: TrainConfig):
        super().__init__(config, None, {"dataset": config.dataset})
        self._dynamic = config.dataset == "mnist"
        self._grey = config.dataset == "fashion-mnist"
        if config.dataset == "binarized-mnist":
            from training.data.binarized import load_binarized_mnist

            self._train = torch.from_numpy(load_binarized_mnist("train", root=config.data_dir)).float()
            self._val = torch.from_numpy(load_binarized_mnist("valid", root=config.data_dir)).float()
        else:
            from training.data.mnist import load_mnist, split_validation

            images = load_mnist("train", root=config.data_dir, dataset=config.dataset, download=config.download)
            if config.val_holdout is not None and not config.val_holdout < len(images):
                raise ConfigError(f"--val-holdout {config.val_holdout}: the training split found ({images.source}) "
                                  f"has {len(images)} images; hold out fewer, to leave some to train on")
            train, val = split_validation(images, n_val=config.val_holdout)
            self.extra["digits_source"] = train.source
            if self._grey:
                self.extra["validation"] = val.source
            self._train = torch.from_numpy(train.images).float().div(255)
            self._val = torch.from_numpy(val.images).float().div(255)
        self._train = self._train.view(-1, 1, 28, 28)
        self._val = self._val.view(-1, 1, 28, 28)[: config.val_size]
        if self._dynamic:  # a fixed binarisation of validation so epochs are comparable
            from training.data.binarized import dynamic_binarize

            self._val = dynamic_binarize(self._val, torch.Generator().manual_seed(VAL_SEED))

    def model_config(self) -> Any:
        return family(self.config.model).Config(**self.config.model_overrides)

    def pixel_means(self) -> Tensor:
        return self._train.mean(0)  # grey levels for dynamic binarisation: the expected binary pixel

    def train_data(self, epoch: int) -> Batch:
        g = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch))
        x = self._train[torch.randperm(self._train.shape[0], generator=g)]
        if self._dynamic:
            from training.data.binarized import dynamic_binarize

            x = dynamic_binarize(x, g)
        return {"x": x}

    def val_data(self) -> Batch:
        return {"x": self._val}

    def epoch_metrics(self, model: Any) -> dict[str, float]:
        if not self._grey:
            return {}
        from models.sampling import prior_images, reconstructions
        from training.quality import classifier_features, diversity, frechet_distance, ssim

        images = prior_images(model, VAL_FD_SAMPLES)
        report = diversity(images[:256], self._val[:256])
        out = {"val_sample_diversity": report["spread"], "val_sample_near_duplicates": report["near_duplicates"]}
        if "images" in model.modes:  # Dec(μ(x)) of every validation image, as evaluate measures the test set
            out["val_recon_ssim"] = float(ssim(reconstructions(model, self._val), self._val).mean())
        judge, val_features = self._judge
        out["val_fd_ours"] = frechet_distance(classifier_features(judge, images), val_features)
        return out

    @cached_property
    def _judge(self) -> tuple[Any, Tensor]:
        """The shipped Fashion-MNIST classifier and its features of the validation images: read and computed once
        a run, not every epoch (the classifier runs on the CPU; the features are the same each epoch)."""
        from training.classifier import FASHION_CLASSIFIER, load_classifier
        from training.quality import classifier_features

        judge = load_classifier(FASHION_CLASSIFIER, "cpu")
        return judge, classifier_features(judge, self._val)


class FolderCaptionsTask(Task):
    """Your own captioned images (COCO captions file + image folder, or JSONL), resized to 32×32 RGB as the
    paper's COCO model; the vocabulary is every word of the training captions, the last 5% are validation."""

    def __init__(self, config: TrainConfig):
        from collections import Counter

        from models.vocab import tokenize
        from training.data.folder import CocoCaptions, JsonlCaptions

        assert config.captions_file is not None
        files = (CocoCaptions(config.captions_file, config.data_dir or ".") if config.dataset == "coco"
                 else JsonlCaptions(config.captions_file))
        tokens = [[t.text for t in tokenize(c)] for c in files.captions]
        counts = Counter(w for ts in tokens for w in ts)
        vocab = Vocabulary(sorted(counts, key=lambda w: (-counts[w], w)), max_length=max(len(t) for t in tokens))
        super().__init__(config, vocab, {"dataset": config.dataset, "captions_file": config.captions_file,
                                         "items": len(files)})
        images = torch.stack([files[i][0] for i in range(len(files))])
        ids, lengths = vocab.encode_batch(files.captions)
        data = {"x": images, "captions": torch.tensor(ids), "lengths": torch.tensor(lengths)}
        n_val = max(1, len(files) // 20)
        self._train = {k: v[:-n_val] for k, v in data.items()}
        self._val = {k: v[-n_val:][: config.val_size] for k, v in data.items()}

    def model_config(self) -> AlignDRAWConfig:
        assert self.vocab is not None
        overrides = with_word_ids(self.config.model_overrides, self.vocab)
        return AlignDRAWConfig(**(AlignDRAWConfig.coco(len(self.vocab)).to_dict() | overrides))

    def train_data(self, epoch: int) -> Batch:
        g = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch))
        order = torch.randperm(self._train["x"].shape[0], generator=g)
        return {k: v[order] for k, v in self._train.items()}

    def val_data(self) -> Batch:
        return self._val

    def preview_conditions(self) -> dict[str, Tensor]:
        return {k: self._val[k][:8] for k in ("captions", "lengths")}

    def preview_labels(self) -> list[str]:
        assert self.vocab is not None
        return [self.vocab.decode(row.tolist()) for row in self._val["captions"][:8]]


class OmniglotTask(Task):
    """Sets of Omniglot drawings for the Neural Statistician (training/data/omniglot.py): each item of `x` is a set
    (set_size, 1, 28, 28) of one class's drawings, binarised dynamically. Trains on the Vinyals `train` split
    (1028 characters × 4 rotations), a fresh partition every epoch with each drawing dilated by a random radius
    (0, 1 or 2 px at 105 px); validates on fixed, undilated sets of the `val` split (172 × 4 classes), built once
    with VAL_SEED and capped at `val_size` sets. The `test` split is never read here: its 423 characters are left
    to evaluation. The set size is the model config's `sample_size`."""

    def __init__(self, config: TrainConfig):
        from training.data import omniglot as om

        super().__init__(config, None, {})
        self._set_size = int(self.checked_model_config().sample_size)
        self._train = om.load_split("train", root=config.data_dir)
        val = om.load_split("val", root=config.data_dir, radii=(0,))  # validation sets are never dilated
        self._val = om.make_sets(val, self._set_size, torch.Generator().manual_seed(VAL_SEED),
                                 dilation=False).x[: config.val_size]
        self._val_classes = om.class_images(val, torch.Generator().manual_seed(VAL_SEED + 1))  # few-shot per epoch
        self.extra = {"dataset": "omniglot", "split": "vinyals", "train_split_sha256": self._train.split_sha256,
                      "val_split_sha256": val.split_sha256, "train_classes": len(self._train),
                      "set_size": self._set_size, "resize": "area 105->28", "dilation_radii": list(self._train.radii),
                      "binarisation": "dynamic"}

    def model_config(self) -> Any:
        return family(self.config.model).Config(**self.config.model_overrides)

    def train_data(self, epoch: int) -> Batch:
        from training.data.omniglot import make_sets

        g = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch))
        return {"x": make_sets(self._train, self._set_size, g, dilation=True).x}

    def val_data(self) -> Batch:
        return {"x": self._val}

    def pixel_means(self) -> Tensor:
        return self._train.images[:, :, 0].mean((0, 1)).unsqueeze(0)  # (1, 28, 28) undilated grey levels

    def preview_conditions(self) -> dict[str, Tensor]:
        return {"sets": self._val[:8].repeat_interleave(8, 0)}  # grid row i: 8 new samples of validation set i

    def epoch_metrics(self, model: Any) -> dict[str, float]:
        """Few-shot accuracy on the validation characters (200 seeded episodes each), progress toward the
        test-split targets without reading the test split."""
        from training.fewshot import few_shot

        out = {}
        for way, shot in ((5, 1), (20, 1)):
            r = few_shot(model, self._val_classes, way, shot, episodes=200, seed=VAL_SEED)
            out[f"val_{way}way_{shot}shot"] = r.accuracy
        return out


MI_BATCH = 500  # sentences over which the aggregate posterior of I_q is taken (the estimate is at most its log)
MI_SENTENCES = 2000  # validation sentences of the per-epoch I_q (all 10k caption ones took 9 s on one CPU thread)


class TextsTask(Task):
    """Sentences for text families (models/textvae.py's layout: {"x": (N, L) ids, words then <eos>, right-padded
    with 0; "lengths": (N,) = words + 1}); the vocabulary (specials at ids 1-3) goes into the checkpoint and the
    model config gets vocab_size and max_length (tokens incl. <eos>) from the data.

    `ptb`: Mikolov's Penn Treebank (training/data/ptb.py): trains on ptb.train, validates on the first `val_size`
    sentences of ptb.valid; ptb.test is left to `evaluate`. `captions-text`: the caption language of the image
    models (training/data/caption_texts.py): a fixed corpus of `pairs_per_epoch` captions per language drawn once
    from the training digits (seed: the run's), validation captions from the held-out digits; the held-out
    combinations never appear. Each epoch is a fresh permutation of the training sentences."""

    def __init__(self, config: TrainConfig):
        from training.data.ptb import TextSplit, encode

        super().__init__(config, None, {"dataset": config.dataset})
        if config.dataset == "ptb":
            from training.data.ptb import find_ptb_file, ptb_corpus

            corpus = ptb_corpus(config.data_dir)
            itos, self._train, val = corpus.itos, corpus.splits["train"], corpus.splits["valid"]
            self.extra |= {"digits_source": str(find_ptb_file("train", config.data_dir).parent),
                           "train_sentences": len(self._train), "train_tokens": self._train.token_count}
            self._val = TextSplit(val.tokens[: config.val_size], val.lengths[: config.val_size], 0)
            longest = max(int(split.lengths.max()) for split in corpus.splits.values())
        else:
            from training.data import captions as cap
            from training.data.caption_texts import caption_texts

            texts = caption_texts(config.pairs_per_epoch, config.val_size, seed=epoch_seed(config.seed, 0, 7),
                                  val_seed=VAL_SEED, root=config.data_dir, download=config.download)
            itos = texts.itos
            stoi = {w: i for i, w in enumerate(itos) if i > 0}
            self._train, self._val = encode(texts.train, stoi), encode(texts.valid, stoi)
            self.extra |= {"languages": texts.languages, "sources": texts.sources,
                           "digits_source": "; ".join(v if k == "mnist" or k in texts.languages else f"{k} {v}"
                                                      for k, v in texts.sources.items()),
                           "banned": list(cap.DEFAULT_BANNED), "held_out_captions": texts.held_out,
                           "corpus_sha256": texts.sha256, "corpus_seed": epoch_seed(config.seed, 0, 7),
                           "captions_per_language": config.pairs_per_epoch,
                           "training_captions": sorted({" ".join(s) for s in texts.train})}
            longest = max(int(self._train.lengths.max()), int(self._val.lengths.max()))
        # Vocabulary normalises a few words ("N" -> "n", "one" -> "1"): the ids are the same, the files' spelling here
        self.extra["spelling"] = {str(i): w for i, w in enumerate(itos) if i > 0 and normalise(w) != w}
        self.vocab = Vocabulary(itos[1:], max_length=longest - 1, spelling=self.extra["spelling"])
        self.max_length = longest

    def model_config(self) -> Any:
        assert self.vocab is not None
        overrides = dict(self.config.model_overrides)
        if overrides.get("vocab_size", len(self.vocab)) != len(self.vocab):
            raise ValueError(f"vocab_size is the data's ({len(self.vocab)}), not {overrides['vocab_size']}")
        fields_ = {"vocab_size": len(self.vocab), "max_length": self.max_length} | overrides
        return family(self.config.model).Config(**fields_)

    def text(self, ids: Any) -> str:
        """Token ids -> the words up to <eos> (padding and <bos> dropped), in the data's own spelling."""
        assert self.vocab is not None
        return self.vocab.sentence(ids.tolist() if isinstance(ids, Tensor) else ids)

    def train_data(self, epoch: int) -> Batch:
        g = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch))
        order = torch.randperm(len(self._train), generator=g)
        return {"x": self._train.tokens[order], "lengths": self._train.lengths[order]}

    def val_data(self) -> Batch:
        return self._val.batch()

    def preview_conditions(self) -> dict[str, Tensor]:
        """8 validation sentences, reconstructed in the previews (the family's `texts` condition)."""
        return {"texts": self._val.tokens[:8], "lengths": self._val.lengths[:8]}

    def preview_labels(self) -> list[str]:
        return [self.text(row) for row in self._val.tokens[:8]]

    def epoch_metrics(self, model: Any) -> dict[str, float]:
        """Active units on the validation sentences and I_q on the first MI_SENTENCES of them (its aggregate posterior
        over batches of MI_BATCH); the validation KL is validate's `val_kl`. The decodes go to
        previews/samples-epochNNNN.txt."""
        out: dict[str, float] = {}
        x, lengths = self._val.tokens, self._val.lengths
        if callable(getattr(model, "active_units", None)):
            counts, _ = model.active_units(x, lengths)
            out["val_active_units"] = float(sum(counts))
        if callable(getattr(model, "mutual_information", None)):
            n = min(MI_SENTENCES, len(x))
            out["val_mutual_information"] = model.mutual_information(
                x[:n], lengths[:n], batch_size=MI_BATCH, generator=torch.Generator().manual_seed(VAL_SEED))
            out["val_mutual_information_batch"] = float(min(MI_BATCH, n))
        return out


TASKS: dict[str, type[Task]] = {"mnist-captions": CaptionsTask, "fashion-captions": CaptionsTask,
                                "coco": FolderCaptionsTask, "jsonl": FolderCaptionsTask,
                                "binarized-mnist": ImagesTask, "mnist": ImagesTask, "fashion-mnist": ImagesTask,
                                "omniglot": OmniglotTask, "ptb": TextsTask, "captions-text": TextsTask}


def make_task(config: TrainConfig) -> Task:
    return TASKS[config.dataset](config)
