"""Training: data readers, loss, recipes, the OpenMIC metric, caches, checkpoints, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mictag.cli import main
from mictag.errors import CheckpointError
from mictag.train.checkpoint import load_model, read_model
from mictag.train.data import DatasetError, open_folder, open_openmic
from mictag.train.loss import masked_bce
from mictag.train.metrics import evaluate, tune_thresholds
from mictag.train.recipes import get_recipe

# -- metric ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_openmic_metric_matches_sklearn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n, k = 60, 20
    y_true = rng.random((n, k)).astype(np.float32)
    y_mask = rng.random((n, k)) < 0.3
    y_mask[:, 0] = False  # a label with no labelled item is left out of the mean
    y_true[:, 1] = 0.2  # a label with no positive at all
    scores = rng.random((n, k))
    report = evaluate([f"c{i}" for i in range(k)], y_true, y_mask, scores)
    expect_macro, expect_pos, expect_ap = [], [], []
    for i in range(1, k):
        rows = y_mask[:, i]
        truth = (y_true[rows, i] >= 0.5).astype(int)
        pred = (scores[rows, i] >= 0.5).astype(int)
        rep = metrics.classification_report(truth, pred, output_dict=True, zero_division=0)
        expect_macro.append(rep["macro avg"]["f1-score"])
        expect_pos.append(metrics.f1_score(truth, pred, pos_label=1, zero_division=0))
        if truth.any():
            expect_ap.append(metrics.average_precision_score(truth, scores[rows, i]))
    assert np.isnan(report.f1_macro[0])
    np.testing.assert_allclose(report.f1_macro[1:], expect_macro, atol=1e-12)
    assert report.macro_f1 == pytest.approx(np.mean(expect_macro))
    assert report.positive_f1 == pytest.approx(np.mean(expect_pos))
    assert report.mean_ap == pytest.approx(np.mean(expect_ap))


def test_tuned_thresholds_never_do_worse_on_their_own_data():
    rng = np.random.default_rng(0)
    y_true = (rng.random((200, 4)) < 0.2).astype(np.float32)
    y_mask = np.ones_like(y_true, bool)
    scores = np.clip(0.3 * y_true + 0.25 * rng.random((200, 4)), 0, 1)  # all below 0.5
    thr = tune_thresholds(y_true, y_mask, scores)
    before = evaluate("abcd", y_true, y_mask, scores).macro_f1
    after = evaluate("abcd", y_true, y_mask, scores, thr).macro_f1
    assert np.all(thr < 0.5) and after > before + 0.2


# -- loss -----------------------------------------------------------------------------------


def test_masked_entries_have_no_effect_on_the_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 20, requires_grad=True)
    target = torch.rand(6, 20)
    mask = torch.rand(6, 20) < 0.2
    loss = masked_bce(logits, target, mask)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.all(grad[~mask] == 0)
    # Changing masked targets (even to nonsense) changes neither the loss nor the gradient.
    target2 = torch.where(mask, target, torch.full_like(target, float("nan")))
    loss2 = masked_bce(logits, target2, mask)
    (grad2,) = torch.autograd.grad(loss2, logits)
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)
    # And it is the mean BCE over the labelled entries.
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], target[mask])
    torch.testing.assert_close(loss, ref)


def test_hard_targets_binarise_soft_labels():
    logits = torch.zeros(1, 2)
    soft = masked_bce(logits, torch.tensor([[0.7, 0.2]]), torch.ones(1, 2, dtype=torch.bool), hard=True)
    hard = masked_bce(logits, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(soft, hard)


# -- recipes --------------------------------------------------------------------------------


def test_recipe_schedules():
    paper = get_recipe("paper")
    assert (paper.batch_size, paper.lr, paper.epochs) == (8, 5e-5, 50)
    assert [paper.lr_at(e) / paper.lr for e in (0, 9, 10, 14, 15, 19, 20, 49)] == [1, 1, .5, .5, .25, .25, .125, .5 ** 8]
    authors = get_recipe("authors-code")
    assert (authors.batch_size, authors.lr, authors.epochs, authors.betas) == (4, 1e-5, 30, (0.95, 0.999))
    assert (authors.weight_decay, authors.freqm, authors.timem) == (5e-7, 24, 96)
    assert authors.lr_at(4) == authors.lr and authors.lr_at(5) == pytest.approx(authors.lr * 0.85)
    assert authors.lr_at(29) == pytest.approx(authors.lr * 0.85 ** 21)
    assert get_recipe("paper", lr=1e-3, epochs=None).lr == 1e-3


# -- data -----------------------------------------------------------------------------------


def test_openmic_reader_splits_and_labels(tiny_openmic):
    a = open_openmic(tiny_openmic, seed=3)
    b = open_openmic(tiny_openmic, seed=3)
    assert [e.key for e in a.val] == [e.key for e in b.val]  # seeded
    assert len(a.val) == round(0.15 * 240) and len(a.train) == 240 - len(a.val) and len(a.test) == 80
    assert not {e.key for e in a.val} & {e.key for e in a.train}
    masked = np.mean([~e.mask for e in a.train + a.val + a.test])
    assert 0.8 < masked < 0.95  # OpenMIC-like sparsity
    e = a.train[0]
    assert e.path == tiny_openmic / "audio" / e.key[:3] / f"{e.key}.ogg"


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "openmic-2018.npz").unlink(), "openmic-2018.npz is missing"),
    (lambda r: (r / "partitions" / "split01_test.csv").unlink(), "split01_test.csv is missing"),
    (lambda r: next((r / "audio").rglob("*.ogg")).unlink(), "audio files .* are missing"),
    (lambda r: np.savez(r / "openmic-2018.npz", Y_true=np.zeros((3, 20))), "lacks Y_mask, sample_key"),
])
def test_openmic_layout_errors_name_the_part(tiny_openmic, tmp_path, damage, message):
    root = tmp_path / "openmic"
    shutil.copytree(tiny_openmic, root)
    damage(root)
    with pytest.raises(DatasetError, match=message):
        open_openmic(root)


def test_folder_reader(tiny_folder):
    splits = open_folder(tiny_folder)
    assert splits.labels == ("low", "mid", "high")
    everything = splits.train + splits.val + splits.test
    assert len(everything) == 90 and len({e.key for e in everything}) == 90
    assert any(not m.all() for m in (e.mask for e in everything))  # blanks stay masked


def test_folder_reader_errors(tmp_path):
    with pytest.raises(DatasetError, match="labels.csv is missing"):
        open_folder(tmp_path)
    (tmp_path / "labels.csv").write_text("file,piano\nnope.wav,1\n")
    with pytest.raises(DatasetError, match="nope.wav does not exist"):
        open_folder(tmp_path)


# -- end to end -----------------------------------------------------------------------------


def _train(args, expect_ok=True):
    result = CliRunner().invoke(main, ["train", *map(str, args)])
    if expect_ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_train_then_evaluate_ast_bs(tiny_openmic, tiny_ast_dir, tmp_path):
    out, cache = tmp_path / "bs", tmp_path / "cache"
    # Before training: the same system with its freshly initialised mapper (0 epochs).
    _train([tiny_openmic, "--ast", tiny_ast_dir, "--reprogrammer", "none", "--epochs", "0", "--out", tmp_path / "untrained",
            "--cache-dir", cache])
    untrained = json.loads((tmp_path / "untrained" / "metrics.json").read_text())["test"]["macro_f1"]
    _train([tiny_openmic, "--ast", tiny_ast_dir, "--reprogrammer", "none", "--epochs", "10", "--lr", "3e-3",
            "--batch-size", "16", "--out", out, "--cache-dir", cache])
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < 0.95 * losses[0]
    assert metrics["test"]["macro_f1"] > untrained + 0.1
    # evaluate reproduces the number written at the end of training
    result = CliRunner().invoke(main, ["evaluate", str(out / "model.pt"), "--data", str(tiny_openmic),
                                       "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("macro F1 (OpenMIC protocol"))
    assert float(line.rsplit(":", 1)[1]) == pytest.approx(metrics["test"]["macro_f1"], abs=1e-4)
    assert "accordion" in result.output and "voice" in result.output
    # the model file is small and self-describing
    payload = read_model(out / "model.pt")
    assert (out / "model.pt").stat().st_size < 200_000
    assert not any(k.startswith("backbone.") for k in payload["weights"])
    assert len(payload["thresholds"]) == 20 and payload["backbone"]["sha256"]
    assert payload["recipe"]["name"] == "paper" and payload["labels"][0] == "accordion"


def test_train_unet_lowers_the_loss_and_resumes(tiny_openmic, tiny_ast_dir, tmp_path, monkeypatch):
    from mictag.train import trainer

    out = tmp_path / "urp"
    args = [tiny_openmic, "--ast", tiny_ast_dir, "--reprogrammer", "unet", "--epochs", "3", "--lr", "3e-3",
            "--batch-size", "16", "--out", out, "--cache-dir", tmp_path / "cache"]
    real_run = trainer.Trainer.run

    def interrupted(self):
        progress = self.progress

        def stop_after_two(msg):
            progress(msg)
            if msg.startswith("epoch 2/"):
                raise KeyboardInterrupt

        self.progress = stop_after_two
        return real_run(self)

    monkeypatch.setattr(trainer.Trainer, "run", interrupted)
    result = _train(args, expect_ok=False)
    assert result.exit_code != 0 and not (out / "model.pt").exists()  # click: Ctrl-C -> Abort
    monkeypatch.setattr(trainer.Trainer, "run", real_run)
    result = _train(args)
    assert "resuming after epoch 1" in result.output  # interrupted before epoch 2 was saved
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]


def test_train_on_a_folder_dataset(tiny_folder, tiny_ast_dir, tmp_path):
    out = tmp_path / "folder"
    _train([tiny_folder, "--ast", tiny_ast_dir, "--reprogrammer", "cnn", "--epochs", "2", "--lr", "3e-3",
            "--out", out, "--cache-dir", tmp_path / "cache"])
    payload = read_model(out / "model.pt")
    assert payload["labels"] == ["low", "mid", "high"]
    model, _ = load_model(out / "model.pt")
    assert model(torch.zeros(1, 128, 128)).shape == (1, 3)


def test_loading_with_another_backbone_is_refused(tiny_openmic, tiny_ast_dir, tmp_path):
    from conftest import write_tiny_hf_ast

    out = tmp_path / "m"
    _train([tiny_openmic, "--ast", tiny_ast_dir, "--reprogrammer", "none", "--epochs", "1", "--out", out,
            "--cache-dir", tmp_path / "cache"])
    other = write_tiny_hf_ast(tmp_path / "other-ast", seed=1)
    with pytest.raises(CheckpointError, match="trained on the frozen AST"):
        load_model(out / "model.pt", source=other)


def test_output_cache_is_reused(tiny_openmic, tiny_ast_dir, tmp_path):
    cache = tmp_path / "cache"
    for run in ("a", "b"):
        _train([tiny_openmic, "--ast", tiny_ast_dir, "--reprogrammer", "none", "--mapper", "fc", "--epochs", "1",
                "--out", tmp_path / run, "--cache-dir", cache])
    outputs = list(cache.glob("outputs-*"))
    assert len(outputs) == 1 and len(list(outputs[0].glob("*.npz"))) == 320
    assert len(list(next(cache.glob("fbank-*")).glob("*.npy"))) == 320


@pytest.mark.parametrize("args, needle", [
    (["/no/such/dataset", "--ast", "x", "--out", "o"], "data path /no/such/dataset does not exist"),
    (["{empty}", "--ast", "x", "--out", "o"], "labels.csv is missing"),
])
def test_bad_dataset_path_is_one_clear_sentence(tmp_path, args, needle):
    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 2
    assert needle in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_runs_report_mean_and_std(tiny_openmic, tiny_ast_dir, tmp_path):
    result = _train([tiny_openmic, "--ast", tiny_ast_dir, "--reprogrammer", "none", "--epochs", "2", "--lr", "3e-3",
                     "--runs", "2", "--out", tmp_path / "runs", "--cache-dir", tmp_path / "cache"])
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    f1 = [json.loads((tmp_path / "runs" / f"run-{i}" / "metrics.json").read_text())["test"]["macro_f1"] for i in (1, 2)]
    assert summary["runs"] == 2 and summary["test_macro_f1_mean"] == pytest.approx(np.mean(f1))
    assert summary["test_macro_f1_std"] == pytest.approx(np.std(f1))
    assert "over 2 runs" in result.output
