"""The training loop: exact resume, 2-process DDP equals one process, artefacts, config errors."""

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import absent
from training.__main__ import main as cli
from training.card import render
from training.config import TrainConfig

TINY = ["--set", "steps=3", "--set", "enc_size=16", "--set", "dec_size=16", "--set", "z_size=4"]


def _train(out, data, *extra):
    return cli(["train", "--model", "draw", "--dataset", "binarized-mnist", "--out", str(out), "--data-dir",
                str(data), "--max-batches", "3", "--batch-size", "20", "--val-size", "200", *TINY, *extra])


def _weights(run):
    return load_file(str(run / "last" / "model.safetensors"))


def test_resume_continues_the_same_run_exactly(tmp_path, shared_data):
    _train(tmp_path / "straight", shared_data, "--epochs", "2")
    _train(tmp_path / "split", shared_data, "--epochs", "1")
    progress = json.loads((tmp_path / "split" / "last" / "progress.json").read_text())["progress"]
    assert progress["epoch"] == 1
    _train(tmp_path / "split", shared_data, "--epochs", "2")  # a new process picks up from last/
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    split = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_nll_bound"] for r in straight] == [r["val_nll_bound"] for r in split]
    for name in ("loss-curves.png", "previews/samples-epoch0002.png", "previews/canvas-epoch0002.png"):
        assert (tmp_path / "split" / name).stat().st_size > 0
    manifest = json.loads((tmp_path / "split" / "last" / "checkpoint.json").read_text())
    assert manifest["training"]["epochs"] == 2 and "command" in manifest["training"]
    assert manifest["metrics"]["best_epoch"] in (1, 2)
    # each command that trained the run keeps its epochs, and the card shows one row per command
    assert [r["epochs"] for r in manifest["training"]["invocations"]] == [[1, 1], [2, 2]]
    straight_manifest = json.loads((tmp_path / "straight" / "last" / "checkpoint.json").read_text())
    assert [r["epochs"] for r in straight_manifest["training"]["invocations"]] == [[1, 2]]
    card = render(tmp_path / "split" / "last")
    assert "| epochs 1–1 | `" in card and "| epochs 2–2 | `" in card and "| command |" not in card
    assert "| command |" in render(tmp_path / "straight" / "last")


def test_a_time_limit_stops_between_epochs_and_the_same_command_goes_on(tmp_path, shared_data):
    # --time-limit 1e-6 min: the first epoch always runs, none after it fits; the same command resumed (and
    # again) lands on the weights of a straight 3-epoch run
    _train(tmp_path / "straight", shared_data, "--epochs", "3")
    for done in (1, 2, 3):
        _train(tmp_path / "boxed", shared_data, "--epochs", "3", "--time-limit", "1e-6")
        progress = json.loads((tmp_path / "boxed" / "last" / "progress.json").read_text())["progress"]
        assert progress["epoch"] == done
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "boxed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_whose_bound_turns_non_finite_stops_and_keeps_the_epoch_before(tmp_path, shared_data, capsys):
    # an absurd rate makes every weight huge within a step; the run must stop there, not train NaNs for its
    # remaining epochs (a GPU run of the statistician did for 10) nor overwrite last/ with them
    _train(tmp_path / "run", shared_data, "--epochs", "1")
    before = _weights(tmp_path / "run")
    _train(tmp_path / "run", shared_data, "--epochs", "4", "--lr", "1e30")
    assert "the bound is not finite" in capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["diverged"] and "diverged" not in rows[0]
    progress = json.loads((tmp_path / "run" / "last" / "progress.json").read_text())["progress"]
    assert progress["epoch"] == 1
    after = _weights(tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_takes_the_commands_learning_rate(tmp_path, shared_data, capsys):
    _train(tmp_path / "run", shared_data, "--epochs", "2", "--patience", "1")
    path = tmp_path / "run" / "last" / "progress.json"
    saved = json.loads(path.read_text())
    saved["progress"]["epochs_without_improvement"] = 1  # as if epoch 2 had not improved: the run has stopped
    path.write_text(json.dumps(saved))
    capsys.readouterr()
    _train(tmp_path / "run", shared_data, "--epochs", "3", "--patience", "1")  # stopped: nothing more, and it says so
    assert "nothing to do: " in (err := capsys.readouterr().err) and "stopped early after epoch 2" in err, err
    _train(tmp_path / "run", shared_data, "--epochs", "3", "--patience", "1", "--lr", "3e-4")  # a lower rate goes on
    _train(tmp_path / "run", shared_data, "--epochs", "4", "--patience", "9")  # a plain resume keeps the saved rate
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["lr"]) for r in rows] == [(1, 1e-3), (2, 1e-3), (3, 3e-4), (4, 3e-4)]


# plain SGD without clipping: a step proportional to the gradient, so gradients summed over the two processes
# instead of averaged (or averaged twice) would show (Adam's step and a clipped norm are blind to that factor)
SCALE_SEEING = ["--optimizer", "sgd", "--clip", "1e9", "--lr", "0.01"]


def test_two_gloo_processes_take_the_same_steps_as_one(tmp_path, shared_data):
    _train(tmp_path / "single", shared_data, "--epochs", "1", "--device", "cpu", *SCALE_SEEING)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "training", "train", "--model", "draw", "--dataset", "binarized-mnist", "--out",
           str(tmp_path / "ddp"), "--data-dir", str(shared_data), "--max-batches", "3", "--batch-size", "20",
           "--val-size", "200", "--epochs", "1", "--device", "cpu", *TINY, *SCALE_SEEING]
    subprocess.run(cmd, check=True, env=env, timeout=300, capture_output=True)
    manifest = json.loads((tmp_path / "ddp" / "last" / "checkpoint.json").read_text())
    assert manifest["training"]["world_size"] == 2
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    for k in a:  # gradients are averaged in another order: equal up to float rounding, not bit for bit
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    single = json.loads((tmp_path / "single" / "metrics.jsonl").read_text())
    ddp = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text())
    assert ddp["val_nll_bound"] == pytest.approx(single["val_nll_bound"], rel=1e-5)


def test_config_file_flags_and_bad_values():
    with pytest.raises(ValueError, match="does not train on"):
        TrainConfig(model="draw", dataset="mnist-captions")
    with pytest.raises(ValueError, match="--optimizer"):
        TrainConfig(optimizer="adagrad")  # sgd is one now (the text-VAE protocol)
    with pytest.raises(ValueError, match="--batch-size 0: must be at least 1; --preview-every 0"):
        TrainConfig(batch_size=0, preview_every=0)  # was a ZeroDivisionError once the data had loaded
    with pytest.raises(ValueError, match=r"--clip -1\.0: must be > 0"):
        TrainConfig(clip=-1.0)
    valid = TrainConfig(kl_warmup=0, fidelity_samples=0, max_batches=0, time_limit=0)  # 0 means something here
    assert (valid.kl_warmup, valid.max_batches, valid.time_limit) == (0, 0, 0)
    with pytest.raises(ValueError, match=r"--lr '1e-3': must be a number"):
        TrainConfig(lr="1e-3")  # type: ignore[arg-type]  (a JSON config's string: refused by name, not a TypeError)
    cfg = TrainConfig.from_sources(None, {"model": "draw", "dataset": "mnist", "lr": 3e-4})
    assert cfg.run_dir.name == "draw-mnist" and cfg.lr == 3e-4
    assert cfg.optimizer == "adam"  # each paper's optimiser unless one is named
    assert TrainConfig(model="aligndraw", dataset="mnist-captions").optimizer == "rmsprop"
    assert TrainConfig(model="draw", dataset="mnist", optimizer="rmsprop").optimizer == "rmsprop"
    assert (cfg.kl_warmup, TrainConfig(model="aligndraw", dataset="mnist-captions").kl_warmup) == (1000, 0)


def test_every_train_flag_says_what_it_does(capsys):
    """`train --help` explains each flag from the field's own text (training/config.py), so a setting added without
    one is caught here."""
    from dataclasses import fields

    assert [f.name for f in fields(TrainConfig) if f.name != "model_overrides" and not f.metadata.get("help")] == []
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--lr-stages LR_STAGES a schedule that sets the rate each epoch" in out
    assert "--compile torch.compile the training loss" in out


def test_kl_weight_rises_linearly_then_stays_at_one():
    from training.train import kl_weight

    assert [kl_weight(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0  # no warm-up: the plain −ELBO from the first batch


def test_config_file_is_read_and_unknown_keys_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "draw", "dataset": "binarized-mnist", "epochs": 7}))
    assert TrainConfig.from_sources(str(path), {"epochs": 9}).epochs == 9
    path.write_text(json.dumps({"modle": "draw"}))
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_sources(str(path), {})
    path.write_text(json.dumps({"epochs": "two"}))  # refused here, not by a traceback once data has loaded
    with pytest.raises(ValueError, match='epochs="two": expected int'):
        TrainConfig.from_sources(str(path), {})
    path.write_text(json.dumps({"clip": 5, "epochs": 3}))  # an int may stand for a float (clip's default is 10.0)
    assert TrainConfig.from_sources(str(path), {}).clip == 5


def test_trains_on_a_users_own_jsonl_captions(tmp_path):
    from PIL import Image

    from models.checkpoint import load_checkpoint

    lines = []
    for i in range(24):
        colour = (255, 0, 0) if i % 2 else (0, 0, 255)
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"{i}.png")
        word = "red" if i % 2 else "blue"
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"A {word} square."}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    cli(["train", "--model", "aligndraw", "--dataset", "jsonl", "--captions-file", str(tmp_path / "data.jsonl"),
         "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", *TINY])
    ckpt = load_checkpoint(tmp_path / "run" / "last")
    assert ckpt.vocab is not None and {"red", "blue", "square", "a", "."} <= set(ckpt.vocab.words)
    assert (ckpt.model.config.height, ckpt.model.config.width, ckpt.model.config.channels) == (32, 32, 3)
    assert ckpt.extra["items"] == 24


def test_dynamic_mnist_validates_on_its_last_training_digits_and_trains_on_the_rest(shared_data):
    """AVB's 55k / 5k: the task trains on the first 55,000 MNIST training digits and validates on a fixed
    binarisation of the last 5,000 (its first val_size), each binary pixel inked only where that digit has ink."""
    from training.data.mnist import load_mnist
    from training.tasks import make_task

    grey = torch.from_numpy(load_mnist("train", root=str(shared_data)).images).float().div(255).view(-1, 1, 28, 28)
    task = make_task(TrainConfig(model="avb", dataset="mnist", data_dir=str(shared_data), val_size=300))
    train, val = task._train, task.val_data()["x"]  # type: ignore[attr-defined]
    assert torch.equal(train, grey[:55_000]) and val.shape == (300, 1, 28, 28)
    assert bool(((val == 0) | (val == 1)).all()) and val.sum() > 0
    assert bool((val <= (grey[55_000:55_300] > 0)).all())  # a binarisation of those digits
    assert not bool((val <= (grey[:300] > 0)).all())  # and of no others (the first training digits, for one)
    assert torch.equal(val, task.val_data()["x"])  # fixed: every epoch validates on the same bits


def test_caption_validation_and_judged_captions_are_painted_from_held_out_digits_only():
    """The captions task's validation pairs and its held-out judged captions are painted from the digits split off
    for validation, never from the training digits: repainting each from the validation pool by its recorded
    indices and boxes gives the same pixels, and the two pools share no image."""
    import hashlib

    from training.data import captions as cap
    from training.tasks import make_task

    task = make_task(TrainConfig(model="aligndraw", dataset="mnist-captions", val_size=40, fidelity_samples=30))
    train, val = task.train_digits, task.val_digits  # type: ignore[attr-defined]

    def prints(images):
        return {hashlib.sha1(image.tobytes()).hexdigest() for image in images}

    assert len(val.labels) > 0 and not prints(train.images) & prints(val.images)
    judged = task._judging[1]  # type: ignore[attr-defined]
    for batch in (task._val_batch, judged["seen"], judged["held_out"]):  # type: ignore[attr-defined]
        assert batch.indices is not None and (batch.indices < len(val.labels)).all()
        assert torch.equal(cap._paint(val.images, batch.indices, batch.boxes), batch.images)


def test_caption_runs_judge_fidelity_each_epoch_on_seen_and_held_out_captions(tmp_path):
    from training.data import captions as cap
    from training.fidelity import CLASSIFIER
    from training.tasks import make_task

    if not (CLASSIFIER / "checkpoint.json").exists():
        absent("the shipped digit judge is absent")
    run = tmp_path / "run"
    cli(["train", "--model", "aligndraw", "--dataset", "mnist-captions", "--out", str(run), "--epochs", "1",
         "--max-batches", "2", "--batch-size", "20", "--val-size", "40", "--fidelity-samples", "30", *TINY])
    row = json.loads((run / "metrics.jsonl").read_text())
    for split in ("seen", "held_out"):
        share = row[f"val_fidelity_{split}"]
        assert 0 <= share <= 1 and round(share * 30, 6).is_integer()  # a share of the 30 judged samples
        assert 0 < row[f"val_attention_digit_words_{split}"] < 1  # some, not all, of α on the caption's digits
    assert (run / "previews" / "alignment-epoch0001.png").stat().st_size > 0
    # The logged numbers are reproducible from the saved checkpoint, on the splits they claim to be.
    from models.checkpoint import load_checkpoint

    task = make_task(TrainConfig(model="aligndraw", dataset="mnist-captions", val_size=40, fidelity_samples=30))
    again = task.epoch_metrics(load_checkpoint(run / "last").model)
    assert again == {k: row[k] for k in again} and len(again) == 4
    judged = task._judging[1]  # type: ignore[attr-defined]
    assert len(judged["seen"]) == len(judged["held_out"]) == 30
    assert not cap.banned_mask(judged["seen"].templates, judged["seen"].digits).any()
    assert cap.banned_mask(judged["held_out"].templates, judged["held_out"].digits).all()
    off = make_task(TrainConfig(model="aligndraw", dataset="mnist-captions", val_size=40, fidelity_samples=0))
    assert off.epoch_metrics(load_checkpoint(run / "last").model) == {}
    # evaluate: both caption splits, with the fidelity at extra sampling temperatures
    out = tmp_path / "eval.json"
    cli(["evaluate", str(run / "last"), "--limit", "20", "--k", "3", "--lk-images", "2", "--temperatures", "0", "0.5",
         "--device", "cpu", "--json", str(out)])
    result = json.loads(out.read_text())
    for split in ("seen", "held_out"):
        r = result[split]
        assert r["images"] == 20 and r["images_L3"] == 2 and r["gap_L3"] >= 0
        assert set(r["fidelity_by_temperature"]) == {"0.0", "0.5"}
        for share in (r["fidelity"], *r["fidelity_by_temperature"].values()):
            assert 0 <= share <= 1 and round(share * 20, 6).is_integer()
        per_template = r["fidelity_by_template"].values()
        assert sum(t["samples"] for t in per_template) == 20
        assert sum(t["fidelity"] * t["samples"] for t in per_template) == pytest.approx(r["fidelity"] * 20)
        assert set(r["fidelity_by_template"]) <= {t.name for t in cap.TEMPLATES}
        assert set(r["fidelity_by_place"]) == set(r["fidelity_by_template"])
        for name, places in r["fidelity_by_place"].items():  # a sample is accepted only where every place is right
            worst = min(place["accuracy"] for place in places.values())
            assert r["fidelity_by_template"][name]["fidelity"] <= worst + 1e-9
        assert set(r["attention"]) == {"digit_words", "place_words", "other_words"}
        assert sum(r["attention"].values()) == pytest.approx(1) and min(r["attention"].values()) > 0


def test_evaluate_cli_reports_the_elbo_on_all_images_and_lk_on_a_few(tmp_path, shared_data):
    _train(tmp_path / "run", shared_data, "--epochs", "1")
    out = tmp_path / "eval.json"
    command = ["evaluate", str(tmp_path / "run" / "last"), "--data-dir", str(shared_data), "--limit", "30",
               "--lk-images", "3", "--k", "20", "--chunk", "20", "--device", "cpu"]  # one image a pass
    cli([*command, "--json", str(out), "--per-image", str(tmp_path / "images.csv")])
    test = json.loads(out.read_text())["test"]
    assert test["images"] == 30 and test["images_L20"] == 3
    rows = [r.split(",") for r in (tmp_path / "images.csv").read_text().splitlines()[1:]]  # index, −L_k, −ELBO_k
    assert len(rows) == 3 and all(0 <= int(r[0]) < 30 for r in rows)
    assert sum(float(r[1]) for r in rows) / 3 == pytest.approx(test["nll_L20"], rel=1e-12)
    assert sum(float(r[2]) for r in rows) / 3 == pytest.approx(test["neg_elbo_L20_samples"], rel=1e-12)
    assert test["nll_bound"] == pytest.approx(test["reconstruction"] + test["kl"])
    # L_k ≥ the mean log-weight of its own samples, by their paired gap; and no worse than chance (p = ½ a pixel:
    # 784 log 2 = 543 nats) plus a little KL for a model three batches old.
    assert test["nll_L20"] <= test["neg_elbo_L20_samples"] and test["nll_L20_stderr"] > 0
    assert test["neg_elbo_L20_samples"] - test["nll_L20"] == pytest.approx(test["gap_L20"])
    assert 300 < test["nll_L20"] < 28 * 28 * math.log(2) + 50
    assert test["gap_L20"] >= 0 and test["nll_L20_estimate_all"] == test["nll_bound"] - test["gap_L20"]
    # recomputed apart from the CLI: the first 30 *test* images' bound, and each CSV row's −L_k belongs to the test
    # index it names (the seeded subset, the L_k noise from seed 0 as nll_k draws it)
    from models.checkpoint import load_checkpoint
    from training.data.binarized import load_binarized_mnist
    from training.likelihood import elbo_terms, nll_k, subset

    model = load_checkpoint(tmp_path / "run" / "last").model.eval()
    x = torch.from_numpy(load_binarized_mnist("test", root=shared_data)).float().view(-1, 1, 28, 28)[:30]
    assert test["nll_bound"] == pytest.approx(elbo_terms(model, {"x": x})["nll_bound"], rel=1e-9)
    chosen = subset(30, 3)
    assert [int(r[0]) for r in rows] == chosen.tolist()
    per: dict[str, torch.Tensor] = {}
    nll_k(model, {"x": x[chosen]}, 20, chunk=20, progress=False, per_example=per)
    assert [float(r[1]) for r in rows] == pytest.approx((-per["lk"]).tolist(), abs=1e-9)
    # cut short by --time-limit 0 (after its first pass), then resumed: the same file and figures as one run
    cut = tmp_path / "cut.csv"
    cli([*command, "--json", str(tmp_path / "cut.json"), "--per-image", str(cut), "--time-limit", "0"])
    partial = json.loads((tmp_path / "cut.json").read_text())["test"]
    assert partial["images_L20"] == 1 and partial["partial_L20"] == "1 of 3 examples"
    assert "nll_L20_estimate_all" not in partial  # the first images of a sorted set carry nothing to all
    resumed = tmp_path / "not-yet" / "resumed.json"  # a folder --json makes (hours of L_k kept, not lost at the end)
    cli([*command, "--json", str(resumed), "--per-image", str(cut), "--resume"])
    assert cut.read_bytes() == (tmp_path / "images.csv").read_bytes()
    assert json.loads(resumed.read_text())["test"] == test


def test_a_history_amended_into_the_record_is_on_the_card(tmp_path, shared_data):
    """A checkpoint trained before invocations were recorded keeps only its last command: a `history` amended into
    its record says what the earlier ones did, and the card then calls the command and its machine the last ones."""
    from models.checkpoint import amend_manifest

    _train(tmp_path / "run", shared_data, "--epochs", "1")
    last = tmp_path / "run" / "last"
    card = render(last)
    assert "| command | `" in card and "| machine | " in card and "| history |" not in card
    amend_manifest(last, training={"history": "lr 1e-3 to epoch 9, then this command"})
    card = render(last)
    assert "| command (the last) | `" in card and "| machine (the last command) | " in card
    assert card.index("| command (the last) |") < card.index("| history | lr 1e-3 to epoch 9, then this command |")


def test_a_run_begun_from_another_checkpoint_keeps_where_its_weights_began(tmp_path, shared_data):
    """--init-from records the source checkpoint (path, weights digest, epochs, the commands that trained it) in the
    new run's record, a resume keeps it after the source is gone, and the card shows it before the run's own rows."""
    import shutil

    from training.card import render

    _train(tmp_path / "source", shared_data, "--epochs", "2")
    source = json.loads((tmp_path / "source" / "last" / "checkpoint.json").read_text())
    _train(tmp_path / "warm", shared_data, "--epochs", "1", "--init-from", str(tmp_path / "source" / "last"))
    shutil.rmtree(tmp_path / "source")  # replaced or gone: the record already holds what it was
    _train(tmp_path / "warm", shared_data, "--epochs", "2", "--init-from", str(tmp_path / "source" / "last"))
    training = json.loads((tmp_path / "warm" / "last" / "checkpoint.json").read_text())["training"]
    origin = training["initialised_from"]
    assert origin["weights_sha256"] == source["weights_sha256"] and origin["epochs"] == 2
    assert [r["epochs"] for r in origin["invocations"]] == [[1, 2]]
    assert origin["invocations"][0]["command"] == source["training"]["command"]
    assert [r["epochs"] for r in training["invocations"]] == [[1, 1], [2, 2]]
    card = render(tmp_path / "warm" / "last")
    assert f"| initialised from | `{tmp_path / 'source' / 'last'}` as it was then (weights sha256 " \
           f"{source['weights_sha256'][:12]}…, 2 epochs)" in card
    assert card.index("| before: epochs 1–2 |") < card.index("| epochs 1–1 |") < card.index("| epochs 2–2 |")
    # begun from a run that was itself begun from another: the whole chain, oldest first
    warm = json.loads((tmp_path / "warm" / "last" / "checkpoint.json").read_text())
    _train(tmp_path / "warmer", shared_data, "--epochs", "1", "--init-from", str(tmp_path / "warm" / "last"))
    chain = json.loads((tmp_path / "warmer" / "last" / "checkpoint.json").read_text())["training"]["initialised_from"]
    assert chain["weights_sha256"] == warm["weights_sha256"] and chain["initialised_from"] == origin
    card = render(tmp_path / "warmer" / "last")
    assert (card.index(f"| initialised from | `{tmp_path / 'source' / 'last'}`") < card.index("| before: epochs 1–2 |")
            < card.index(f"| initialised from | `{tmp_path / 'warm' / 'last'}`") < card.index("| before: epochs 2–2 |")
            < card.index("| command |"))
    assert "| epochs | 1 in this run; 5 with the 4 of the weights it began from (best validation epoch" in card
    # a record from before initialised_from was kept: its command's own --init-from names where it began, and the
    # same folder spelt another way is the same command
    manifest = tmp_path / "warmer" / "last" / "checkpoint.json"
    doc = json.loads(manifest.read_text())
    del doc["training"]["initialised_from"]
    manifest.write_text(json.dumps(doc))
    again = f"{tmp_path / 'warm' / 'last'}/"
    assert _train(tmp_path / "warmer", shared_data, "--epochs", "2", "--init-from", again) == 0


def test_init_from_copies_matching_weights_and_their_optimizer_averages(tmp_path):
    """A new run warm-started from another model's checkpoint: shared tensors and RMSprop's running averages
    carry over by name; a tensor the source lacks starts fresh and has no optimizer state yet."""
    from dataclasses import replace

    from models.aligndraw import AlignDRAW
    from models.checkpoint import Checkpoint
    from tests.models.conftest import TINY_ALIGN, random_captions
    from training.state import Progress, save_run_state, warm_start
    from training.train import make_optimizer

    torch.manual_seed(0)
    source, config = AlignDRAW(TINY_ALIGN), TrainConfig()
    source_opt = make_optimizer(source, config)
    ids, lengths = random_captions(4, 6, TINY_ALIGN.vocab_size)
    for _ in range(2):
        source(torch.rand(4, 1, 16, 16), ids, lengths).loss.backward()
        source_opt.step()
    save_run_state(tmp_path / "source", Checkpoint(source), {"model": source_opt}, Progress())

    target = AlignDRAW(replace(TINY_ALIGN, align_values="words"))
    target_opt = make_optimizer(target, config)
    assert warm_start(target, {"model": target_opt}, tmp_path / "source") == ["word_values.weight"]
    source_params = dict(source.named_parameters())
    for name, p in target.named_parameters():
        if name == "word_values.weight":
            assert p not in target_opt.state
            continue
        torch.testing.assert_close(p, source_params[name], atol=0, rtol=0)
        torch.testing.assert_close(target_opt.state[p]["square_avg"], source_opt.state[source_params[name]]
                                   ["square_avg"], atol=0, rtol=0)
        assert float(target_opt.state[p]["step"]) == 2
    target(torch.rand(4, 1, 16, 16), ids, lengths).loss.backward()
    target_opt.step()  # the restored state steps together with the fresh parameter
    assert float(target_opt.state[target.word_values.weight]["step"]) == 1


def test_key_blind_names_words_and_a_word_outside_the_vocabulary_is_a_clear_error():
    from training.tasks import make_task

    config = TrainConfig(model="aligndraw", dataset="mnist-captions", val_size=40, fidelity_samples=0,
                         model_overrides={"align_values": "words", "key_blind": ["3", "7", 5]})
    task = make_task(config)
    assert task.vocab is not None
    blind = task.model_config().key_blind
    assert blind == (task.vocab.stoi["3"], task.vocab.stoi["7"], 5)
    one = make_task(replace(config, model_overrides={"key_blind": "3"}))
    assert one.model_config().key_blind == (task.vocab.stoi["3"],)
    bad = make_task(replace(config, model_overrides={"key_blind": ["3", "eleven"]}))
    with pytest.raises(ValueError, match="'eleven' is not a word"):
        bad.model_config()


IWAE_TINY = ["--set", "hidden=[16,8]", "--set", "latent=[4,3]", "--set", "k=3"]


def _train_iwae(out, data, *extra):
    return cli(["train", "--model", "iwae", "--dataset", "binarized-mnist", "--out", str(out), "--data-dir",
                str(data), "--batch-size", "20", "--val-size", "100", *IWAE_TINY, *extra])


def test_iwae_trains_through_the_shared_trainer_on_its_staged_schedule(tmp_path, shared_data, capsys):
    """Adam with the paper's ε, the output bias from the training pixel means, --lr-stages across a resume, and
    the run ending with its last stage; validation reports −L_k."""
    from models.checkpoint import load_checkpoint
    from training.data.binarized import load_binarized_mnist

    stages = ["--lr-stages", "[[1, 0.001], [1, 0.0005]]", "--max-batches", "3"]
    _train_iwae(tmp_path / "fresh", shared_data, "--epochs", "1", "--max-batches", "0")  # no step: the init
    bias = load_checkpoint(tmp_path / "fresh" / "last").model.output.logits.bias
    means = torch.from_numpy(load_binarized_mnist("train", root=shared_data)).float().mean(0).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(bias, torch.logit(means), atol=1e-5, rtol=0)

    _train_iwae(tmp_path / "run", shared_data, "--epochs", "1", *stages)
    _train_iwae(tmp_path / "run", shared_data, "--epochs", "9", *stages)  # resumes; the schedule ends after 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["lr"]) for r in rows] == [(1, 1e-3), (2, 5e-4)]
    capsys.readouterr()
    _train_iwae(tmp_path / "run", shared_data, "--epochs", "9", *stages)  # at the schedule's end: it says so
    assert "has run its --lr-stages schedule to its end (epoch 2)" in capsys.readouterr().err
    # −L_3 starts at about the pixel marginal's 206 nats (the output bias), far below chance's 543
    assert all(100 < r["val_nll_bound"] < 230 for r in rows), [r["val_nll_bound"] for r in rows]
    assert (tmp_path / "run" / "previews" / "walk-epoch0002.png").stat().st_size > 0  # 8 latent walks
    saved = json.loads((tmp_path / "run" / "last" / "progress.json").read_text())["optimizer"]
    assert saved["param_groups"][0]["eps"] == 1e-4  # the paper's Adam ε, from the family's optimizer options


def test_another_optimizer_than_the_papers_takes_its_own_defaults(tmp_path, shared_data):
    """The family's optimizer options are its paper optimizer's (IWAE's Adam ε, AVB's β): --optimizer rmsprop or sgd
    runs without them (they clashed with RMSprop's own ε, and RMSprop takes no β), at that optimizer's defaults."""
    _train_iwae(tmp_path / "iwae", shared_data, "--epochs", "1", "--max-batches", "2", "--optimizer", "rmsprop")
    saved = json.loads((tmp_path / "iwae" / "last" / "progress.json").read_text())["optimizer"]
    assert saved["param_groups"][0]["eps"] == 1e-6 and saved["param_groups"][0]["alpha"] == 0.9  # RMSprop's own
    _train_avb(tmp_path / "avb", shared_data, "--epochs", "1", "--max-batches", "2", "--optimizer", "sgd")
    saved = json.loads((tmp_path / "avb" / "last" / "progress.json").read_text())
    groups = [*saved["optimizer"]["param_groups"], *saved["optimizers"]["adversary"]["param_groups"]]
    assert len(groups) == 2 and all("betas" not in g and "momentum" in g for g in groups), groups  # SGD's


def test_a_compiled_loss_trains_as_the_eager_one(tmp_path, shared_data, monkeypatch):
    """--compile (torch.compile of the loss and its backward): the same steps in other float bits, so three Adam
    steps end at the eager run's weights and validation bound within rounding, and the checkpoint records it."""
    if not (shutil.which("g++") or shutil.which("c++")):
        absent("no C++ compiler: torch.compile's CPU backend needs one (--compile is optional; CI tests it)")
    steps = ["--epochs", "1", "--max-batches", "3"]
    _train_iwae(tmp_path / "eager", shared_data, *steps)
    compiled, calls = [], []  # what the trainer handed torch.compile, and each call of what it got back
    real_compile = torch.compile

    def spy(fn, **kw):
        compiled.append(fn)
        wrapped = real_compile(fn, **kw)

        def counted(*args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return wrapped(*args, **kwargs)
        return counted

    monkeypatch.setattr(torch, "compile", spy)
    _train_iwae(tmp_path / "compiled", shared_data, *steps, "--compile")
    assert len(compiled) == 1
    assert calls.count(True) == 3  # the three training steps went through the compiled net (validation may not)
    _train_iwae(tmp_path / "init", shared_data, "--epochs", "1", "--max-batches", "0")
    a, b, init = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled"), _weights(tmp_path / "init")
    assert a.keys() == b.keys() == init.keys()
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3  # the steps moved the weights, by far more
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    rows = [json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("eager", "compiled")]
    assert math.isclose(rows[0]["val_nll_bound"], rows[1]["val_nll_bound"], rel_tol=1e-5)
    assert math.isclose(rows[0]["train_nll_bound"], rows[1]["train_nll_bound"], rel_tol=1e-5)
    recorded = json.loads((tmp_path / "compiled" / "last" / "checkpoint.json").read_text())["training"]["config"]
    assert recorded["compile"] is True


VAEGAN_TINY = ["--set", "base=4", "--set", "z_size=4", "--set", "margin=0.02"]  # a narrow margin: players sit out


def _train_vaegan(out, *extra):
    return cli(["train", "--model", "vaegan", "--dataset", "fashion-mnist", "--out", str(out), "--batch-size", "20",
                "--val-size", "100", "--max-batches", "4", *VAEGAN_TINY, *extra])


def test_vaegan_resumes_its_three_optimisers_exactly(tmp_path):
    """Three optimiser groups (one sits out some batches under the equilibrium rule): a run split by a resume ends
    bit-identical to one straight run, every optimizer's state included; the GAN's costs and the sample-diversity
    check, the validation reconstruction SSIM and the validation FD (ours) are logged each epoch."""
    from training.data.mnist import DatasetNotFoundError, load_mnist

    try:
        load_mnist("test", dataset="fashion-mnist")
    except DatasetNotFoundError:
        absent("Fashion-MNIST absent (Debian's dataset-fashion-mnist)")
    _train_vaegan(tmp_path / "straight", "--epochs", "2")
    _train_vaegan(tmp_path / "split", "--epochs", "1")
    _train_vaegan(tmp_path / "split", "--epochs", "2")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for group in ("encoder", "decoder", "discriminator"):
        sa = load_file(str(tmp_path / "straight" / "last" / f"optimizer-{group}.safetensors"))
        sb = load_file(str(tmp_path / "split" / "last" / f"optimizer-{group}.safetensors"))
        assert sa.keys() == sb.keys() and sa and all(torch.equal(sa[k], sb[k]) for k in sa)
    rows = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert all({"train_d_real_cost", "train_gen_cost", "train_dis_updated", "val_sample_diversity",
                "val_sample_near_duplicates", "val_recon_ssim", "val_fd_ours"} <= r.keys()
               for r in rows)
    assert all(0 < r["val_sample_diversity"] < 5 and -1 <= r["val_recon_ssim"] <= 1 and r["val_fd_ours"] > 0
               for r in rows)
    assert any(r["train_dis_updated"] < 1 or r["train_dec_updated"] < 1 for r in rows)  # the rule did skip updates
    # the last epoch's validation SSIM and FD, recomputed here from the saved checkpoint and the held-out images
    from models.checkpoint import load_checkpoint
    from models.sampling import prior_images, reconstructions
    from training.classifier import FASHION_CLASSIFIER, load_classifier
    from training.data.mnist import split_validation
    from training.quality import classifier_features, frechet_distance, ssim
    from training.tasks import VAL_FD_SAMPLES

    model = load_checkpoint(tmp_path / "split" / "last").model.eval()
    _, held_out = split_validation(load_mnist("train", dataset="fashion-mnist"), n_val=None)
    val = torch.from_numpy(held_out.images[:100]).float().div(255).view(-1, 1, 28, 28)
    judge = load_classifier(FASHION_CLASSIFIER, "cpu")
    with torch.no_grad():
        fd = frechet_distance(classifier_features(judge, prior_images(model, VAL_FD_SAMPLES)),
                              classifier_features(judge, val))
        recon_ssim = float(ssim(reconstructions(model, val), val).mean())
    assert rows[-1]["val_fd_ours"] == pytest.approx(fd, rel=1e-5)
    assert rows[-1]["val_recon_ssim"] == pytest.approx(recon_ssim, rel=1e-5)


def test_vaegan_evaluation_reports_sample_quality_and_its_card_shows_it(tmp_path):
    """`evaluate` on a Fashion-MNIST run: the bound on the test images, then the quality report (samples from seeds,
    the reconstruction of every evaluated image) with the training images' own distance as the floor, the pictures,
    and a card that renders them."""
    from training.card import render
    from training.data.mnist import DatasetNotFoundError, load_mnist

    try:
        load_mnist("test", dataset="fashion-mnist")
    except DatasetNotFoundError:
        absent("Fashion-MNIST absent (Debian's dataset-fashion-mnist)")
    run = tmp_path / "run"
    _train_vaegan(run, "--epochs", "1", "--max-batches", "2")
    out = run / "last"
    cli(["evaluate", str(out), "--limit", "300", "--samples", "200", "--json", str(out / "evaluation.json"),
         "--pictures", str(out)])
    results = json.loads((out / "evaluation.json").read_text())
    assert results["test"]["images"] == 300 and math.isfinite(results["test"]["nll_bound"])
    quality = results["quality"]
    assert quality["samples"] == 200 and quality["reconstructions"] == quality["test_images"] == 300
    assert quality["sample_seeds"] == "0..199" and quality["classifier"] == "fashion-classifier"
    assert 0 <= quality["fd_ours_train_vs_test"] < quality["fd_ours"]  # an untrained decoder is far from the data
    assert 0 < quality["recon_ssim"] < 1 and quality["recon_mse"] > 0
    assert 0 <= quality["sample_near_duplicates"] <= 1 and quality["sample_spread"] > 0
    for name in ("samples.png", "reconstructions.png", "walk.png"):
        assert (out / name).stat().st_size > 0
    card = render(out)
    assert "## Sample quality" in card and "Fréchet distance" in card and "reconstructions.png" in card


AVB_TINY = ["--set", "conv=[4,4]", "--set", "deconv=[4,4]", "--set", "z_size=4", "--set", "eps_dim=4", "--set",
            "n_basis=3", "--set", "basis_hidden=[8]", "--set", "basis_samples=32", "--set", "adversary_conv=[4]",
            "--set", "adversary_hidden=[16,16]"]


def _train_avb(out, data, *extra):
    return cli(["train", "--model", "avb", "--dataset", "mnist", "--out", str(out), "--data-dir", str(data),
                "--batch-size", "20", "--val-size", "100", "--max-batches", "3", *AVB_TINY, *extra])


def test_avb_resumes_its_two_optimisers_exactly_at_the_papers_two_rates(tmp_path, shared_data):
    """Two optimiser groups, "model" and "adversary": a run split by a resume ends bit-identical to one straight run,
    both optimizers' state included; the adversary's Adam runs at twice the model's rate (the paper's 1e-4 and 5e-5,
    β1 = 0.5), and an explicit --lr on resume keeps that ratio. The official split: 5,000 training digits validate."""
    assert TrainConfig(model="avb", dataset="mnist").val_holdout == 5000  # 55k train / 5k validation
    _train_avb(tmp_path / "straight", shared_data, "--epochs", "2")
    _train_avb(tmp_path / "split", shared_data, "--epochs", "1")
    _train_avb(tmp_path / "split", shared_data, "--epochs", "2")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("optimizer.safetensors", "optimizer-adversary.safetensors"):
        sa = load_file(str(tmp_path / "straight" / "last" / name))
        sb = load_file(str(tmp_path / "split" / "last" / name))
        assert sa.keys() == sb.keys() and sa and all(torch.equal(sa[k], sb[k]) for k in sa)

    def rates(run):
        saved = json.loads((run / "last" / "progress.json").read_text())
        groups = {"model": saved["optimizer"], "adversary": saved["optimizers"]["adversary"]}
        assert all(g["param_groups"][0]["betas"] == [0.5, 0.999] for g in groups.values())
        return {name: g["param_groups"][0]["lr"] for name, g in groups.items()}

    assert rates(tmp_path / "split") == {"model": 5e-5, "adversary": 1e-4}
    _train_avb(tmp_path / "split", shared_data, "--epochs", "3", "--lr", "2e-5")
    assert rates(tmp_path / "split") == {"model": 2e-5, "adversary": 4e-5}
    rows = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [5e-5, 5e-5, 2e-5]
    assert all({"train_adversary_cost", "train_reconstruction", "val_kl"} <= r.keys() for r in rows)
    assert all(math.isfinite(r["val_nll_bound"]) for r in rows)
    assert (tmp_path / "split" / "previews" / "walk-epoch0003.png").stat().st_size > 0
    # evaluate: the approximate bound on test images, L_k with r_α as the proposal, and the card's pictures
    out = tmp_path / "eval.json"
    cli(["evaluate", str(tmp_path / "split" / "last"), "--data-dir", str(shared_data), "--limit", "20",
         "--lk-images", "2", "--k", "5", "--json", str(out), "--pictures", str(tmp_path / "pictures")])
    test = json.loads(out.read_text())["test"]
    assert test["images"] == 20 and test["images_L5"] == 2 and test["nll_L5"] <= test["neg_elbo_L5_samples"]
    assert "nll_L5_estimate_all" not in test  # AVB's bound through T is approximate: nothing is carried from it
    assert all((tmp_path / "pictures" / name).stat().st_size > 0
               for name in ("samples.png", "reconstructions.png", "walk.png"))


def test_a_resume_without_lr_keeps_the_runs_rate_over_the_familys_default(tmp_path):
    """VAE/GAN's 2e-4 is a default, not a --lr: a run started at --lr 1e-3 resumes at 1e-3."""
    from training.data.mnist import DatasetNotFoundError, load_mnist

    try:
        load_mnist("test", dataset="fashion-mnist")
    except DatasetNotFoundError:
        absent("Fashion-MNIST absent (Debian's dataset-fashion-mnist)")
    _train_vaegan(tmp_path / "run", "--epochs", "1", "--max-batches", "1", "--lr", "1e-3")
    _train_vaegan(tmp_path / "run", "--epochs", "2", "--max-batches", "1")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [1e-3, 1e-3]
    _train_vaegan(tmp_path / "fresh", "--epochs", "1", "--max-batches", "1")
    assert json.loads((tmp_path / "fresh" / "metrics.jsonl").read_text())["lr"] == 2e-4


def test_paired_differences_come_with_their_paired_standard_error(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("index,nll,neg_elbo_k_samples\n4,1.0,2\n9,2.0,3\n1,3.0,4\n7,4.0,5\n")
    (tmp_path / "b.csv").write_text("index,tokens,nll\n1,5,3.6\n4,5,1.5\n7,5,4.3\n9,5,2.4\n")  # other order
    assert cli(["paired", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    d = [0.5, 0.4, 0.6, 0.3]  # b − a by index: 4, 9, 1, 7
    mean = sum(d) / 4
    assert out["examples"] == 4 and out["b_minus_a"] == pytest.approx(mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 3)
    assert out["b_minus_a_paired_stderr"] == pytest.approx(sd / 2)
    assert out["nll_a_stderr"] == pytest.approx(math.sqrt(sum((v - 2.5) ** 2 for v in [1, 2, 3, 4]) / 3) / 2)
    (tmp_path / "c.csv").write_text("index,nll\n4,1.0\n9,2.0\n")
    with pytest.raises(SystemExit):  # different examples: a clear error, not a number
        cli(["paired", str(tmp_path / "a.csv"), str(tmp_path / "c.csv")])
    assert "cover different examples" in capsys.readouterr().err
    (tmp_path / "d.csv").write_text("index,nll\n4,1.0\n9\n")  # a row cut short by a full disk
    with pytest.raises(SystemExit):
        cli(["paired", str(tmp_path / "a.csv"), str(tmp_path / "d.csv")])
    assert "d.csv, line 3: not an index and an NLL" in capsys.readouterr().err
    for name, k in (("a.csv", 5000), ("b.csv", 100)):  # journals of another k: not alike, whatever their indices
        (tmp_path / f"{name}.state.json").write_text(json.dumps({"images": "same", "k": k, "done": 4}))
    with pytest.raises(SystemExit):
        cli(["paired", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    err = capsys.readouterr().err
    assert "not measured alike" in err and "k 5000 and 100" in err


def test_compact_halves_the_weights_and_they_load_back_as_float32(tmp_path):
    """`python -m training compact` rewrites model.safetensors in float16 (recorded in the manifest, with the command)
    and the model loads back into float32 parameters equal to the originals rounded to float16."""
    from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from models.textvae import TextVAE, TextVAEConfig

    torch.manual_seed(0)
    model = TextVAE(TextVAEConfig(vocab_size=2000, max_length=6, embed=32, hidden=32, z_dim=2, tie_weights=True))
    save_checkpoint(tmp_path / "m", Checkpoint(model, training={"command": "python -m training train ..."}))
    before = (tmp_path / "m" / "model.safetensors").stat().st_size
    assert cli(["compact", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 0.6 * before
    assert {v.dtype for v in load_file(str(tmp_path / "m" / "model.safetensors")).values()} == {torch.float16}
    manifest = json.loads((tmp_path / "m" / "checkpoint.json").read_text())
    assert manifest["weights_dtype"] == "float16" and manifest["training"]["command"].endswith("train ...")
    assert manifest["training"]["compacted"].startswith("python -m training compact")
    assert "| weights | float16, by `python -m training compact" in render(tmp_path / "m")  # the card says so
    loaded = load_checkpoint(tmp_path / "m").model  # the sha256 of the rewritten file is checked here
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert q.dtype == p.dtype and torch.equal(q, p.half().to(p.dtype)), name


def test_the_command_line_refuses_what_a_run_cannot_take_in_one_line(tmp_path, shared_data, capsys):
    """A --set the family lacks or of the wrong type, --out on a file, a resume whose --set would build another
    model (it was ignored, and recorded as if applied), a run directory given to evaluate: each an error line and
    status 2 before any training step, never a traceback."""
    for bad, says in [("nosuch=3", "iwae has no such field"), ("k=2.5", "--set k=2.5: expected int"),
                      ("k=true", "expected int"), ("hidden=16", "expected tuple")]:
        with pytest.raises(SystemExit) as stop:
            _train_iwae(tmp_path / "never", shared_data, "--set", bad, "--epochs", "1")
        assert stop.value.code == 2 and says in capsys.readouterr().err, bad
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit):
        _train_iwae(tmp_path / "a-file", shared_data, "--epochs", "1")
    assert "is a file, not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()

    run = tmp_path / "run"
    assert _train_iwae(run, shared_data, "--epochs", "1", "--max-batches", "2") == 0
    before = json.loads((run / "last" / "checkpoint.json").read_text())
    assert _train_iwae(run, shared_data, "--epochs", "2", "--max-batches", "2", "--set", "k=1") == 2
    err = capsys.readouterr().err
    assert "holds a model with k=3; the --set k=1 would build another" in err and "Traceback" not in err
    assert json.loads((run / "last" / "checkpoint.json").read_text()) == before  # untouched
    assert _train_iwae(run, shared_data, "--epochs", "1", "--max-batches", "2") == 0
    assert "nothing to do: " in capsys.readouterr().err
    assert cli(["evaluate", str(run), "--data-dir", str(shared_data)]) == 2
    assert "is a training run: evaluate its best/ or last/" in capsys.readouterr().err


def test_a_run_folder_is_resumed_only_as_it_was_made_and_a_cut_save_is_recovered(tmp_path, shared_data, capsys):
    """Another --model, --dataset or --init-from on a run folder is an error line before any data loads; what a kill
    inside a save leaves (last/ gone between the renames, a stale last.old, last/ not yet written after best/) is put
    right, so the run goes on from its newest whole state instead of failing or starting over."""
    run = tmp_path / "run"
    assert _train(run, shared_data, "--epochs", "2") == 0
    for model, dataset, extra, says in (("iwae", "binarized-mnist", [], "--model draw (this command: iwae)"),
                                        ("draw", "mnist", TINY, "--dataset binarized-mnist (this command: mnist)"),
                                        ("draw", "binarized-mnist", [*TINY, "--init-from", str(run / "best")],
                                         "begun from scratch")):
        assert cli(["train", "--model", model, "--dataset", dataset, "--out", str(run), "--data-dir",
                    str(shared_data), "--epochs", "3", *extra]) == 2
        assert says in capsys.readouterr().err
    assert json.loads((run / "last" / "progress.json").read_text())["progress"]["epoch"] == 2  # untouched

    # killed between the two renames of a save: last/ gone, the new state whole in last.tmp, the old in last.old
    (run / "last").rename(run / "last.tmp")
    shutil.copytree(run / "best", run / "last.old")
    assert _train(run, shared_data, "--epochs", "3") == 0
    assert "last restored from last.tmp" in capsys.readouterr().err
    assert json.loads((run / "last" / "progress.json").read_text())["progress"]["epoch"] == 3
    assert not (run / "last.tmp").exists() and not (run / "last.old").exists()
    # killed while the old state was being removed: a stale last.old beside last/ no longer blocks every later save
    shutil.copytree(run / "best", run / "last.old")
    assert _train(run, shared_data, "--epochs", "4") == 0
    assert json.loads((run / "last" / "progress.json").read_text())["progress"]["epoch"] == 4
    assert not (run / "last.old").exists()

    # killed while saving last/ right after best/ (best is written first: the same state): the run goes on from it
    shutil.rmtree(run / "last")
    best_epoch = json.loads((run / "best" / "progress.json").read_text())["progress"]["epoch"]
    assert _train(run, shared_data, "--epochs", str(best_epoch + 1)) == 0
    assert "restored from" in capsys.readouterr().err
    assert json.loads((run / "last" / "progress.json").read_text())["progress"]["epoch"] == best_epoch + 1


def test_user_mistakes_on_the_command_line_are_error_lines_not_tracebacks(tmp_path, shared_data, capsys):
    run = tmp_path / "run"
    assert _train(run, shared_data, "--epochs", "1") == 0
    ckpt = run / "last"
    assert cli(["evaluate", str(ckpt / "checkpoint.json"), "--data-dir", str(shared_data)]) == 2  # a file, no folder
    assert "checkpoint.json is a file; a checkpoint is a folder" in capsys.readouterr().err
    (tmp_path / "model.pt").write_bytes(b"\x80\x04")  # a pickle's first bytes: named, never opened
    assert cli(["evaluate", str(tmp_path / "model.pt"), "--data-dir", str(shared_data)]) == 2
    assert "pickled .pt files are never loaded" in capsys.readouterr().err
    assert _train(tmp_path / "fresh", shared_data, "--epochs", "1", "--init-from", str(tmp_path / "typo")) == 2
    assert "typo/checkpoint.json not found" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    for flag in ("--k", "--chunk", "--limit"):  # 0 or less would be read as "all", or fail deep in a pass
        with pytest.raises(SystemExit) as stop:
            cli(["evaluate", str(ckpt), "--data-dir", str(shared_data), flag, "0"])
        assert stop.value.code == 2 and "must be ≥ 1, got 0" in capsys.readouterr().err
    assert cli(["evaluate", str(ckpt), "--data-dir", str(shared_data), "--per-sentence", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "error: --per-sentence is for Penn Treebank text models" in err and "--per-image writes" in err
    # a value of the right type that the family's own checks refuse: named, after the data loaded, not a traceback
    assert cli(["train", "--model", "iwae", "--dataset", "binarized-mnist", "--out", str(tmp_path / "iwae"),
                "--data-dir", str(shared_data), "--epochs", "1", "--set", "k=0"]) == 2
    assert "iwae's config: need k >= 1" in capsys.readouterr().err


def test_mistakes_the_trainer_used_to_take_are_error_lines_before_a_step(tmp_path, shared_data, capsys):
    """Each of these once gave a traceback (another optimizer's state a step in; a negative seed once the data had
    loaded), or silently did something else (trained into a shipped checkpoint's folder; epochs of no batch; a
    schedule of no stage; --lr overwritten by the stages; DRAW with no steps): an error line and status 2 now."""
    run = tmp_path / "run"
    assert _train(run, shared_data, "--epochs", "1") == 0
    before = json.loads((run / "last" / "progress.json").read_text())
    assert _train(run, shared_data, "--epochs", "2", "--optimizer", "rmsprop") == 2
    assert "--optimizer adam (this command: rmsprop)" in capsys.readouterr().err
    assert json.loads((run / "last" / "progress.json").read_text()) == before  # untouched
    shipped = tmp_path / "shipped"
    shutil.copytree(run / "last", shipped)  # a finished checkpoint: checkpoint.json at its top, no last/
    assert _train(shipped, shared_data, "--epochs", "1") == 2
    assert f"--init-from {shipped} to start from its weights" in capsys.readouterr().err
    assert not (shipped / "metrics.jsonl").exists()
    for extra, says in ((["--seed", "-1"], "--seed -1: must be at least 0"),
                        (["--lr-stages", "[]"], "no stage"),
                        (["--lr-stages", "[[2, 1e-3]]", "--lr", "1e-4"], "--lr and --lr-stages both set the rate")):
        with pytest.raises(SystemExit) as stop:
            _train(tmp_path / "never", shared_data, "--epochs", "1", *extra)
        assert stop.value.code == 2 and says in capsys.readouterr().err, extra
    (tmp_path / "list.json").write_text('["epochs"]')
    with pytest.raises(SystemExit):
        _train(tmp_path / "never", shared_data, "--config", str(tmp_path / "list.json"))
    assert "must hold a JSON object of settings" in capsys.readouterr().err
    assert _train(tmp_path / "never", shared_data, "--epochs", "1", "--set", "steps=0") == 2
    assert "draw's config: need every size and the steps ≥ 1: steps=0" in capsys.readouterr().err
    assert _train(tmp_path / "short", shared_data, "--epochs", "1", "--lr-stages", "[[1, 1e-3], [2, 1e-4]]") == 0
    assert "note: --lr-stages runs 3 epochs; --epochs 1 ends the run first" in capsys.readouterr().err
    assert _train(tmp_path / "never", shared_data, "--epochs", "1", "--batch-size", "100000") == 2
    assert "--batch-size 100000 is more than the 50000 training examples" in capsys.readouterr().err
    assert not (tmp_path / "never" / "last").exists()
    assert cli(["train", "--model", "iwae", "--dataset", "mnist", "--out", str(tmp_path / "never"), "--data-dir",
                str(shared_data), "--epochs", "1", "--val-holdout", "1000000"]) == 2
    assert "--val-holdout 1000000: the training split found" in capsys.readouterr().err
    ckpt = run / "last"
    with pytest.raises(SystemExit) as stop:
        cli(["evaluate", str(ckpt), "--data-dir", str(shared_data), "--per-image", str(tmp_path / "p.csv"),
             "--time-limit", "-5"])
    assert stop.value.code == 2 and "must be a number of minutes ≥ 0, got -5" in capsys.readouterr().err


def test_a_damaged_last_and_a_missing_device_are_error_lines(tmp_path, shared_data, capsys):
    run = tmp_path / "run"
    assert _train(run, shared_data, "--epochs", "1") == 0
    (run / "last" / "progress.json").write_text('{"progress": {"epo')  # truncated by a full disk, say
    assert _train(run, shared_data, "--epochs", "2") == 2
    assert "cannot be resumed: its optimizer state or progress is damaged" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _train(tmp_path / "gpu", shared_data, "--epochs", "1", "--device", "cuda") == 2
        assert "sees no CUDA device" in capsys.readouterr().err
    assert _train(tmp_path / "odd", shared_data, "--epochs", "1", "--device", "nosuch") == 2
    assert "--device nosuch: not a torch device" in capsys.readouterr().err
    # --init-from a checkpoint of which no tensor fits: refused, not a silent start from scratch recorded as its origin
    assert _train_iwae(tmp_path / "iwae", shared_data, "--epochs", "1", "--init-from", str(run / "best")) == 2
    assert "none of its tensors matches this iwae model" in capsys.readouterr().err
