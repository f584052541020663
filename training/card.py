"""`python -m training card CHECKPOINT [--check]`: the checkpoint's card, `README.md` beside it, rendered from its
`checkpoint.json` and `evaluation.json` alone, so regenerating it changes nothing (tests/checkpoints checks that).

The card says how the checkpoint was made (command, data, epochs, wall time, machine, config against the paper's)
and what evaluation measured, beside the paper's number where the paper has one for the same measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from models.checkpoint import read_manifest
from models.family import family

CARD = "README.md"
EVALUATION = "evaluation.json"
# The pictures a card shows when its directory has them (copied from the run's previews when it is shipped).
PICTURES = {"samples.png": "samples (captioned models: one per preview caption, seen captions first, then held out)",
            "canvas.png": "canvas strip: the first samples over the T steps",
            "alignment.png": "word alignment α: the words (across) at each step (down), per preview caption",
            "reconstructions.png": "test images (odd rows) above their reconstructions (even rows)",
            "walk.png": "latent walks between two seeds",
            "test-samples.png": "Omniglot test characters: 5 examples (left), then 10 new samples of each",
            "mnist-samples.png": "MNIST digits (never seen in training): 5 examples, then 10 new samples of each",
            "loss-curves.png": "training and validation curves (and per-epoch fidelity where judged)"}

# What a reader must know to compare a dataset's nats with anything else.
DATASET_NOTES = {
    "mnist-captions": "MNIST with Captions images are grey-level (not binarised): these nats are Bernoulli "
                      "cross-entropy against grey targets, not log-likelihoods of binary data; compare them only with "
                      "each other.",
    "fashion-captions": "Fashion-MNIST with captions is grey-level: its nats are cross-entropy against grey targets.",
    "mnist": "Dynamic binarisation: the test images are binarised once (seed 0), pixel ~ Bernoulli(grey level).",
    "omniglot": "Bound in nats per set of drawings (the dataset ELBO), binarised once with seed 0; sets of the "
                "test characters, which training never read.",
    "fashion-mnist": "Grey levels in [0, 1]. The vae objective's −ELBO is in nats of a Gaussian density of grey levels "
                     "(continuous, so it can be negative); the vaegan objective's is in the discriminator's feature "
                     "space and is no bound on anything about x.",
}

# training/quality.py's report (evaluation.json "quality"): what each number is, and how to read it.
QUALITY_ROWS = [
    ("fd_ours", "Fréchet distance of samples to the test images, on fashion-classifier features (ours, not FID)"),
    ("fd_ours_train_vs_test", "the same distance from training images to the test images: the floor"),
    ("sharpness_ratio", "sharpness of samples / of test images (variance of the Laplacian; 1 is the data's)"),
    ("recon_ssim", "reconstruction SSIM on the test images (1 is perfect)"),
    ("recon_mse", "reconstruction MSE per pixel on the test images"),
    ("sample_near_duplicates", "share of 1,000 samples nearer another sample than 95% of test images are to theirs "
                               "(0.05 for real images; near 1 is collapse)"),
    ("confidence_samples", "the classifier's mean top probability on samples"),
    ("confidence_test", "the same on test images"),
]


def paper_rows(cls: Any, dataset: str | None, config: dict[str, Any]) -> dict[str, str]:
    """The family's published numbers (its `paper_results`) for this dataset and config, by measurement."""
    return {metric: value for sel, metric, value in getattr(cls, "paper_results", ())
            if all((dataset if f == "dataset" else config.get(f)) == v for f, v in sel.items())}


def _nats(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} ± {stderr:.2f}" if stderr is not None else f"{value:.2f}"


DATA_FIELDS = ("vocab_size", "max_length")  # set by the dataset, not a choice of the model


def _config_rows(cls: Any, config: dict[str, Any]) -> str:
    default = cls.Config().to_dict()
    names = [f.name for f in fields(cls.Config) if f.name not in DATA_FIELDS]
    same = [n for n in names if n in config and json.dumps(config[n]) == json.dumps(default.get(n))]  # tuple = list
    changed = [f"{n}={json.dumps(config[n])}" for n in names if n in config and n not in same]
    return "the paper's" if not changed else "the paper's except " + ", ".join(f"`{c}`" for c in changed)


def _bounds(split: dict[str, Any], k: int, bound: str, paper: dict[str, str]) -> list[tuple[str, str, str]]:
    sets = "sets" in split
    count = f"{split['sets']} sets of {split['set_size']}" if sets else f"{split.get('images')} images"
    rows = [(f"{bound} (the training objective's bound, one draw of its noise per {'set' if sets else 'image'}; "
             f"{count})",
             _nats(split.get("nll_bound")), paper.get("test −ELBO", ""))]
    if "nll_bound_per_image" in split:
        rows.append((f"{bound} / {split['set_size']}: per image", _nats(split["nll_bound_per_image"]), ""))
    lk = f"nll_L{k}"
    if lk in split:
        rows.append((f"−L_{k} ({split[f'images_L{k}']} images, ± standard error)",
                     _nats(split[lk], split.get(f"{lk}_stderr")), paper.get(f"−L_{k}", "")))
    if f"nll_L{k}_estimate_all" in split:
        rows.append((f"−L_{k} carried to all {split['images']} images (bound − the subset's gap)",
                     _nats(split[f"nll_L{k}_estimate_all"]), ""))
    if f"neg_elbo_L{k}_samples" in split:
        rows.append((f"−ELBO from the same {k} samples", _nats(split[f"neg_elbo_L{k}_samples"],
                                                              split.get(f"neg_elbo_L{k}_samples_stderr")), ""))
    if f"gap_L{k}" in split:
        rows.append((f"gap L_{k} − ELBO (same samples)", _nats(split[f"gap_L{k}"], split.get(f"gap_L{k}_stderr")),
                     ""))
    if "active_units" in split:
        rows.append((f"active units per layer (Cov_x E_q[u] > {split.get('active_units_threshold', 1e-2):g})",
                     "+".join(str(a) for a in split["active_units"]), ""))
    if "fidelity" in split:
        rows.append(("caption fidelity, temperature 1", f"{split['fidelity']:.1%}", ""))
        for t, f in split.get("fidelity_by_temperature", {}).items():
            rows.append((f"caption fidelity, temperature {t}", f"{f:.1%}", ""))
        by_template = split.get("fidelity_by_template")
        if by_template:  # where a held-out split's fidelity comes from: its caption templates differ widely
            rows.append(("caption fidelity by template, temperature 1 (samples)", "; ".join(
                f"{name} {v['fidelity']:.1%} ({v['samples']})" for name, v in by_template.items()), ""))
    return rows


def _share(value: float) -> str:
    return f"{value:.1%}"


def render_text(text: dict[str, Any], paper: dict[str, str]) -> list[str]:
    """The "Text" section: PTB's test NLL, PPL, −ELBO, KL, active units and I_q beside the anchors (the family's
    `paper_results` "test NLL / PPL"), or for the caption language the shares of samples alignDRAW can draw."""
    lines = ["## Text", ""]
    common = [(f"active units (Var_x E_q[z_u \\| x] > {text.get('active_units_threshold', 1e-2):g})",
               str(text.get("active_units")), ""),
              (f"mutual information I_q (aggregate posterior over batches of {text.get('mutual_information_batch')})",
               f"{text.get('mutual_information', float('nan')):.2f} nats", "")]
    if text.get("dataset") == "ptb":
        k = text["k"]
        how = "exact: no z, L_1 = log p(x)" if text.get("nll_exact") else f"−L_{k}, importance sampling, k = {k}"
        lines += [f"`python -m training evaluate` on Penn Treebank's test split: {text['sentences']:,} sentences, "
                  f"{text['tokens']:,} tokens (words + <eos>; <bos> not counted); nats per sentence. PPL = "
                  "exp(Σ NLL / Σ tokens).", "", "| measurement | this checkpoint | anchor |", "|---|---:|---|",
                  f"| test NLL / PPL ({how}) | {_nats(text['nll'], text.get('nll_stderr'))} / {text['ppl']:.2f} "
                  f"| {paper.get('test NLL / PPL', '')} |",
                  f"| −ELBO / the PPL it bounds | {_nats(text['neg_elbo'])} / {text['neg_elbo_ppl']:.2f} | |",
                  f"| KL(q(z \\| x) ‖ p(z)) | {_nats(text.get('kl'))} | |"]
        lines += [f"| {m} | {v} | {p} |" for m, v, p in common] + [""]
        return lines
    languages = ", ".join(text.get("languages", []))
    lines += [f"`python -m training evaluate`: {text['samples']:,} prior samples (z from seeds "
              f"{text['sample_seeds']}), judged as captions for alignDRAW (languages: {languages}). "
              "Well-formed: one of the 8 templates filled with that language's names (so every word is in its "
              "alignDRAW vocabulary); novel: not a caption of the training corpus; held out: a combination "
              "training never saw.", "", "| measurement | greedy | sampled (temperature 1) |", "|---|---:|---:|"]
    greedy, sampled = text["prior_samples"]["greedy"], text["prior_samples"]["sampled"]
    for key, what in (("in_vocabulary", "every word in an alignDRAW vocabulary"), ("well_formed", "well-formed"),
                      ("novel", "novel to the training corpus"), ("well_formed_novel", "well-formed and novel"),
                      ("held_out", "a held-out combination")):
        lines.append(f"| {what} | {_share(greedy[key])} | {_share(sampled[key])} |")
    lines += [f"| distinct captions | {greedy['distinct']:,} | {sampled['distinct']:,} |",
              f"| distinct held-out captions | {greedy['held_out_distinct']} | {sampled['held_out_distinct']} |", "",
              f"On {text['validation_captions']:,} validation captions:", "", "| measurement | this checkpoint |",
              "|---|---:|",
              f"| reconstruction accuracy (greedy decoding of the posterior mean = the caption) | "
              f"{_share(text['reconstruction_accuracy'])} |",
              f"| z matters: distinct greedy decodings of {text['samples']:,} prior / {text['posterior_samples']:,} "
              f"posterior samples | {text['distinct_greedy_prior']:,} / {text['distinct_greedy_posterior']:,} "
              f"({'yes' if text['z_matters'] else 'no: collapsed'}) |",
              f"| −ELBO per caption | {_nats(text['neg_elbo'])} |",
              f"| KL(q(z \\| x) ‖ p(z)) | {_nats(text.get('kl'))} |"]
    lines += [f"| {m} | {v} |" for m, v, _ in common] + [""]
    examples = text.get("examples")
    if isinstance(examples, dict):
        path = examples["path"]
        lines += ["Examples: the greedy decodings of the first 8 prior samples, and the 8 points (ends included) of "
                  f"the straight line between the posterior means of “{path['from']}” and “{path['to']}”, as "
                  "`interpolate` returns them:", "", "| prior sample | path point |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in zip(examples["greedy_prior_samples"], path["texts"], strict=False)]
        lines.append("")
    return lines


CLASSIFIER_DATA = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}  # a judging classifier's data, as named


def _title(directory: Path) -> tuple[str, str]:
    """The card's title and the folder its commands name: checkpoints/<name> for a shipped checkpoint; a training
    run's best/ or last/ (carded before it ships) is titled by its run, "<run>/best" not "best", at its own path."""
    if directory.name in ("best", "last"):
        return f"{directory.resolve().parent.name}/{directory.name}", str(directory)  # resolve: `card best` in a run
    return directory.name, f"checkpoints/{directory.name}"


def render_classifier(directory: Path, manifest: dict[str, Any]) -> str:
    """The card of a judging classifier (format glimpse-classifier/1): its command, data and accuracy."""
    m = manifest["metrics"]
    name, folder = _title(directory)
    dataset = manifest.get("dataset", "mnist")  # MNIST manifests predate the field
    shift = next(k for k in m if k.startswith("test_accuracy_shifted_")).removeprefix("test_accuracy_shifted_")
    shift = shift.removesuffix("px")
    role = ("The digit classifier that judges caption fidelity (training/fidelity.py)." if dataset == "mnist" else
            "The Fashion-MNIST classifier whose penultimate features measure sample quality (training/quality.py: "
            "a Fréchet distance of ours, not FID).")
    return "\n".join([
        f"# {name}", "", f"{role} "
        f"Generated by `python -m training card {folder}` from `checkpoint.json`.", "",
        "| | |", "|---|---|",
        f"| command | `{m['command']}` |", f"| data | {m['train_source']} (±{shift} px random shifts) |",
        f"| epochs | {m['epochs']} |", f"| training time | {m['wall_seconds'] / 60:.0f} min |",
        f"| {CLASSIFIER_DATA.get(dataset, dataset)} test accuracy | {m['test_accuracy']:.1%} "
        f"({m[f'test_accuracy_shifted_{shift}px']:.1%} shifted by ±{shift} px) |",
        ""])


def _several_commands(training: dict[str, Any]) -> bool:
    return len(training.get("invocations", [])) > 1


def _command_rows(training: dict[str, Any]) -> list[str]:
    """One command row; or, for a run resumed under other commands (another machine, schedule or batch), one row
    per command with its epochs, machine and wall time."""
    runs = training.get("invocations", [])
    if not _several_commands(training):  # a `history` says what earlier commands did (recorded before invocations)
        return [f"| command{' (the last)' if training.get('history') else ''} | `{training.get('command', '—')}` |"]
    return [f"| epochs {r['epochs'][0]}–{r['epochs'][1]} | {_invocation(r)} |" for r in runs]


def _invocation(r: dict[str, Any]) -> str:
    """One command that trained a checkpoint, with where and how long."""
    return (f"`{r['command']}` on {r['machine']}, torch {r['torch']}, {r['world_size']} process(es), "
            f"{(r['wall_seconds'] or 0) / 60:.0f} min")


def _origins(training: dict[str, Any]) -> list[dict[str, Any]]:
    """The checkpoints a run began from (--init-from, each recording its own), oldest first."""
    chain, origin = [], training.get("initialised_from")
    while origin:
        chain.append(origin)
        origin = origin.get("initialised_from")
    return chain[::-1]


def _origin_rows(training: dict[str, Any]) -> list[str]:
    """For a run begun from another checkpoint's weights (--init-from): that checkpoint and the commands that trained
    it, before this run's own rows (whose epochs count from 1 again); a chain of them oldest first."""
    return [row for origin in _origins(training) for row in (
        f"| initialised from | `{origin['checkpoint']}` as it was then (weights sha256 "
        f"{str(origin.get('weights_sha256'))[:12]}…, {origin.get('epochs')} epochs), itself trained by the row(s) "
        "below; the rows after them train on from its weights |",
        *(f"| before: epochs {r['epochs'][0]}–{r['epochs'][1]} | {_invocation(r)} |"
          for r in origin.get("invocations", [])))]


def _with_origins(training: dict[str, Any]) -> tuple[str, str]:
    """What the epochs and training-time rows add for a run begun from other weights: the whole chain's totals."""
    chain = _origins(training)
    epochs = sum(o.get("epochs") or 0 for o in chain)
    if not epochs:
        return "", ""
    seconds = training.get("wall_seconds", 0) + sum(r.get("wall_seconds") or 0 for o in chain
                                                    for r in o.get("invocations", []))
    return (f" in this run; {training.get('epochs', 0) + epochs} with the {epochs} of the weights it began from",
            f" in this run; {seconds / 60:.0f} with those it began from")


def render(directory: str | Path) -> str:
    directory = Path(directory)
    raw = json.loads((directory / "checkpoint.json").read_text())
    if raw.get("format") == "glimpse-classifier/1":
        return render_classifier(directory, raw)
    manifest = read_manifest(directory)
    kind, training, config, extra = manifest["kind"], manifest["training"], manifest["config"], manifest["extra"]
    cls = family(kind)
    evaluation = json.loads((directory / EVALUATION).read_text()) if (directory / EVALUATION).exists() else {}
    dataset = extra.get("dataset")
    paper = paper_rows(cls, dataset, config)
    summary = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
    more_epochs, more_minutes = _with_origins(training)
    name, folder = _title(directory)
    lines = [f"# {name}", "", f"`{kind}`: {summary}", "",
             f"Generated by `python -m training card {folder}` from `checkpoint.json` and "
             f"`{EVALUATION}`; edit those, not this file.", "", "## How it was made", "", "| | |", "|---|---|",
             *_origin_rows(training), *_command_rows(training),
             *([f"| history | {training['history']} |"] if training.get("history") else []),
             f"| data | {dataset}" + (f" ({extra['digits_source']})" if extra.get("digits_source") else "") + " |",
             f"| epochs | {training.get('epochs', '—')}{more_epochs} (best validation epoch "
             f"{manifest['metrics'].get('best_epoch')}, bound {_nats(manifest['metrics'].get('best_val_nll_bound'))} "
             "nats) |",
             f"| training time | {training.get('wall_seconds', 0) / 60:.0f} min of training steps"
             f"{more_minutes} |",
             *([] if _several_commands(training) else
               [f"| machine{' (the last command)' if training.get('history') else ''} | "
                f"{training.get('machine', '—')}, torch {training.get('torch', '—')}, "
                f"{training.get('world_size', 1)} process(es) |"]),
             f"| config | {_config_rows(cls, config)} |",
             *([f"| weights | {manifest['weights_dtype']}, by `{training.get('compacted', '?')}` (loaded into "
                f"float32 parameters){'; ' + training['compacted_check'] if training.get('compacted_check') else ''}"
                " |"] if manifest.get("weights_dtype") else []),
             *([f"| example sets | {len(extra['example_sets']['sets'])} characters of "
                f"{extra['example_sets']['split']} (never read in training), by `{training.get('examples', '?')}` |"]
               if extra.get("example_sets") else []), ""]
    splits = {name: v for name, v in evaluation.items() if isinstance(v, dict) and "nll_bound" in v}
    if splits:
        k = evaluation.get("k", 0)
        paired = any(f"nll_L{k}" in split for split in splits.values())  # L_k measured (families with a likelihood)
        lines += ["## Measured", "", "`python -m training evaluate`" + (f" (k = {k})" if paired else "")
                  + f"; nats per {'set' if any('sets' in v for v in splits.values()) else 'image'}, lower is better."
                  + (f" −L_{k} and the −ELBO from its samples are paired (the same images and samples)." * paired)
                  + (f" {DATASET_NOTES[dataset]}" if dataset in DATASET_NOTES else ""), ""]
        for name, split in splits.items():
            lines += [f"### {name}", "", "| measurement | this checkpoint | paper |", "|---|---:|---|"]
            bound = getattr(cls, "bound_name", "−ELBO").format(**config)  # IWAE: −L_{k} of its training k
            lines += [f"| {m} | {v} | {p} |" for m, v, p in _bounds(split, k, bound, paper)]
            lines.append("")
    quality = evaluation.get("quality")
    if isinstance(quality, dict):
        lines += ["## Sample quality", "", f"`python -m training evaluate` on {quality.get('test_images')} test images "
                  f"and {quality.get('samples')} samples (seeds {quality.get('sample_seeds')}); ± standard error.", "",
                  "| measurement | this checkpoint |", "|---|---:|"]
        for key, what in QUALITY_ROWS:
            if key in quality:
                stderr = quality.get(f"{key}_stderr")
                lines.append(f"| {what} | {quality[key]:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")
                             + " |")
        lines.append("")
    few = evaluation.get("few_shot")
    if isinstance(few, dict):
        lines += ["## Few-shot classification", "", f"`python -m training evaluate`: {few.get('protocol')}. "
                  f"Omniglot: the {few.get('classes')} test classes of the Vinyals split (sha256 "
                  f"`{str(few.get('split_sha256'))[:12]}…`); MNIST: {few.get('mnist_per_class')} test digits of each "
                  "class, a dataset the model never saw. Paper: Edwards & Storkey 2017, and in brackets the "
                  "ashysheya/neural-stat PyTorch reproduction.", "",
                  "| task | episodes | this checkpoint (± s.e.) | paper |", "|---|---:|---:|---|"]
        for data, name in (("omniglot_test", "Omniglot"), ("mnist", "MNIST")):
            for r in few.get(data, []):
                task = f"{name} {r['way']}-way {r['shot']}-shot"
                lines.append(f"| {task} | {r['episodes']} | {100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f} % "
                             f"| {paper.get(task, '')} |")
        lines.append("")
    text = evaluation.get("text")
    if isinstance(text, dict):
        lines += render_text(text, paper)
    shown = [(name, what) for name, what in PICTURES.items() if (directory / name).exists()]
    if shown:
        lines += ["## Pictures", ""] + [f"![{what}]({name})  \n{what}" + "\n" for name, what in shown]
    again = "last command above" if _several_commands(training) else "command above"
    if directory.name in ("best", "last"):  # a run folder: its own run goes on, from last/ (training/state.py)
        lines += ["## Resuming", "", f"This is a training run's {directory.name}/ checkpoint: the {again}, "
                  f"run again, goes on from `{directory.parent / 'last'}` where the run stopped (unless it ended: "
                  "early stopping, or its last epoch reached).", ""]
    elif any(directory.glob("optimizer*.safetensors")):
        lines += ["## Resuming", "", "The optimizer state ships beside the weights, so training goes on where it "
                  f"stopped: `mkdir -p runs/{directory.name} && cp -r checkpoints/{directory.name} "
                  f"runs/{directory.name}/last`, then the {again} with `--out runs/{directory.name}`.", ""]
    else:  # left out where it would take the checkpoint past the repository's 30 MB a model (Adam: 2 × the weights)
        lines += ["## Resuming", "", "The optimizer state is not shipped (it would take the checkpoint past 30 MB), "
                  "so training cannot resume exactly; the command above with `--init-from checkpoints/"
                  f"{directory.name}` starts a new run from these weights with fresh optimizer moments.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training card", description=__doc__)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--check", action="store_true", help="exit 1 when a card is not current (writes nothing)")
    args = parser.parse_args(argv)
    stale = []
    for d in map(Path, args.checkpoints):
        text = render(d)
        if args.check:
            if not (d / CARD).exists() or (d / CARD).read_text() != text:
                stale.append(str(d))
        else:
            (d / CARD).write_text(text)
    if stale:
        print("stale cards: " + ", ".join(stale), file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
