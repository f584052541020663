"""python -m training {train,evaluate} ... (see --help of each)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields

from training.config import DATASETS, MODELS, ConfigError, TrainConfig, check_overrides, parse_override
from training.device import flush_denormals


def main(argv: list[str] | None = None) -> int:
    """The command line; what a user got wrong (missing data, no checkpoint there, a --set the run cannot take) is
    an error line and exit status 2, not a traceback."""
    from models.checkpoint import CheckpointError
    from training.data.mnist import DatasetError
    from training.likelihood import JournalError

    try:
        return _main(argv)
    except (ConfigError, CheckpointError, DatasetError, JournalError) as e:
        print(f"python -m training: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:  # a path given that is
        # not what it names, or one this user cannot read or write
        print(f"python -m training: error: {f'{e.filename}: {e.strerror}' if e.filename else e}", file=sys.stderr)
        return 2


def _at_least(low: int):
    """An argparse type: an int ≥ low (0 or a negative count would be read as "all" or crash deep inside)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be ≥ {low}, got {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in its message: "invalid int value"
    return parse


def _minutes(text: str) -> float:
    """An argparse type: a number of minutes ≥ 0 (0: stop after the first pass; a negative one did so silently, nan
    never stopped)."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of minutes ≥ 0, got {text}")
    return value


_minutes.__name__ = "minutes"


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a model (resumes from RUN/last when it exists)")
    tr.add_argument("--config", help="JSON file with TrainConfig fields; flags given here override it")
    tr.add_argument("--model", choices=MODELS, help=TrainConfig.__dataclass_fields__["model"].metadata["help"])
    tr.add_argument("--dataset", choices=DATASETS, help=TrainConfig.__dataclass_fields__["dataset"].metadata["help"])
    tr.add_argument("--set", dest="model_overrides", action="append", type=parse_override, default=[],
                    metavar="FIELD=VALUE", help="model config override, e.g. --set steps=16 (repeatable)")
    for f in fields(TrainConfig):
        if f.name in ("model", "dataset", "model_overrides"):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            tr.add_argument(flag, dest=f.name, action="store_true", default=None, help=f.metadata.get("help"))
            continue
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        tr.add_argument(flag, dest=f.name, type=kind, help=f.metadata.get("help"))

    ev = sub.add_parser("evaluate", help="test-set ELBO, importance-weighted log-likelihood, caption fidelity")
    ev.add_argument("checkpoint")
    ev.add_argument("--k", type=_at_least(1), default=5000, help="importance samples per image (sentence) for L_k")
    ev.add_argument("--limit", type=_at_least(1), help="evaluate the first N test images (sentences; captions-text: "
                    "validation captions) only")
    ev.add_argument("--lk-images", type=_at_least(1),
                    help="L_k on a seeded random N of those only (default: all for DRAW, "
                    "100 per caption split): k = 5000 costs 5000 passes an image. With fewer than all, DRAW also "
                    "reports nll_L<k>_estimate_all: the ELBO on all minus the subset's mean L_k - ELBO gap")
    ev.add_argument("--temperatures", type=float, nargs="+", default=[], metavar="T",
                    help="alignDRAW: also the caption fidelity when sampling z_t = mu_t + T sigma_t eps_t at each T")
    ev.add_argument("--chunk", type=_at_least(1), default=500, help="rows of one L_k pass (k samples of ≥ 1 image)")
    ev.add_argument("--samples", type=_at_least(1),
                    help="prior samples judged: grey-image generators (default 10,000), "
                    "captions-text models (default 1,000)")
    ev.add_argument("--mi-batch", type=_at_least(2), default=500,
                    help="text models: sentences over which I_q's aggregate "
                    "posterior is taken (the estimate is at most the log of it)")
    ev.add_argument("--per-sentence", help="ptb: write each test sentence's tokens, NLL and ELBO here (CSV)")
    ev.add_argument("--per-image", help="MNIST models: write each L_k image's test index, −L_k and ELBO here (CSV), "
                    "as each is measured, with the state to resume from beside it (FILE.state.json)")
    ev.add_argument("--resume", action="store_true", help="MNIST models: go on from the images --per-image already "
                    "holds (the same checkpoint, k, --chunk and images), to the same numbers as one run through")
    ev.add_argument("--time-limit", type=_minutes, help="MNIST models: stop L_k after this many minutes, between two "
                    "images (groups of --chunk/k images when k < --chunk); the figures cover the images measured so "
                    "far (partial_L<k>), --resume goes on")
    ev.add_argument("--pictures", help="models of MNIST, Fashion-MNIST or Omniglot: write their PNGs here (samples; "
                    "reconstructions and a walk where the model takes them; set models: examples beside new samples)")
    ev.add_argument("--episodes", type=_at_least(1), default=1000, help="set models: seeded few-shot episodes per task")
    ev.add_argument("--data-dir")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", help="also write the results here")

    sub.add_parser("card", help="write (or --check) the README.md card beside checkpoints", add_help=False)
    co = sub.add_parser("compact", help="rewrite a checkpoint's weights at half precision (float16), in place")
    co.add_argument("checkpoint")
    ex = sub.add_parser("examples", help="a set model's example sets (test characters it never read) into its "
                                         "checkpoint, for the page and clients to pick")
    ex.add_argument("checkpoint")
    ex.add_argument("--data-dir")
    ex.add_argument("--count", type=_at_least(1), default=12, help="characters")
    ex.add_argument("--size", type=_at_least(2), default=6, help="drawings of each (the page uses all but the last as "
                    "examples and the last as a query)")
    ex.add_argument("--seed", type=int, default=0)
    pa = sub.add_parser("paired", help="B − A over the same test examples from two --per-image / --per-sentence "
                                       "files: the mean difference of their NLL and its paired standard error")
    pa.add_argument("a")
    pa.add_argument("b")

    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["card"]:
        from training.card import main as card_main

        return card_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "train":
        from training.train import train

        overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None}
        overrides["model_overrides"] = dict(args.model_overrides)
        if not overrides["model_overrides"]:
            del overrides["model_overrides"]
        try:
            config = TrainConfig.from_sources(args.config, overrides)
            check_overrides(config.model, config.model_overrides)
        except (ValueError, TypeError) as e:
            tr.error(str(e))
        if config.run_dir.exists() and not config.run_dir.is_dir():
            tr.error(f"--out {config.run_dir} is a file, not a run directory")
        try:
            train(config)
        except KeyboardInterrupt:
            last = config.run_dir / "last"
            print(f"interrupted: {last} keeps the last finished epoch; the same command resumes from it"
                  if (last / "checkpoint.json").exists() else "interrupted before an epoch finished: nothing was saved",
                  file=sys.stderr)
            return 130
        return 0
    if args.command == "compact":
        import shlex

        import torch

        from models.checkpoint import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        ckpt.training["compacted"] = shlex.join(["python", "-m", "training", *argv])
        save_checkpoint(args.checkpoint, ckpt, weights_dtype=torch.float16)
        return 0
    if args.command == "examples":
        if not (1 <= args.count <= 100 and 1 <= args.size <= 20):
            ex.error("--count is 1..100 characters and --size 2..20 drawings")
        from training.examples import main as examples_main

        return examples_main(args, argv)
    if args.command == "paired":
        from training.likelihood import measured_alike, paired, read_per_example

        try:
            measured_alike(args.a, args.b)
            result = paired(read_per_example(args.a), read_per_example(args.b))
        except ValueError as e:
            pa.error(str(e))  # paired's own usage line, not the top-level one
        print(json.dumps(result, indent=2))
        return 0
    from training.evaluate import main as evaluate_main

    try:
        return evaluate_main(args)
    except KeyboardInterrupt:
        print("interrupted" + (f": {args.per_image} keeps the images measured; the same command with --resume goes on"
                               if getattr(args, "per_image", None) else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    flush_denormals()  # for the whole process, before a torch op starts the thread pool (training/device.py)
    sys.exit(main())
