"""Choose the shipped musicnn tagger from the Figure 4 runs and package it into mictag/data/taggers.

    python experiments/ship_musicnn_openmic20.py --results benchmarks/results/musicnn-figure4-corpus.json \
        --data CORPUS [--cross-domain REAL]

Every run of a shippable system (a frozen musicnn with a reprogrammer and/or mapper: kilobytes; not
TL, whose fine-tuned backbone is megabytes, nor CNN-BS, which has no backbone) is scored on the
corpus's validation split with the full truth, whatever labels it trained on, so that every
system is compared on the same labels. The system with the best mean validation macro F1 wins,
and its best seed ships, with per-label thresholds tuned on that validation split. The test
split and the real recordings are only reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from musicnn_reprogramming import FULL_CSV, corpus_splits, cross_domain_examples, present_report, summary

from mictag.model.fbank import FrameFinish
from mictag.paths import mictag_home
from mictag.train.cache import FbankCache
from mictag.train.checkpoint import load_model
from mictag.train.metrics import tune_thresholds
from mictag.train.trainer import load_split

NAME = "musicnn-openmic20"
NOT_SHIPPABLE = {"musicnn-TL": "its fine-tuned backbone is megabytes", "CNN-BS": "it has no musicnn backbone"}


def scores(model_file: str, examples, cache_dir: Path) -> tuple[np.ndarray, object]:
    model, _ = load_model(model_file)
    finish = FrameFinish(model.cfg.fbank, normalize=model.cfg.normalize_input)
    data = load_split(examples, FbankCache(cache_dir, model.cfg.fbank))
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), 32):
            frames, valid, _, _ = data.batch(np.arange(start, min(start + 32, len(data))))
            out.append(torch.sigmoid(model(finish(frames, valid))).numpy())
    return np.concatenate(out), data


def tuned(labels, data, scores_: np.ndarray, thresholds: np.ndarray) -> dict:
    """F1 with the tuned thresholds (no mAP: it is a ranking measure, and these are decisions)."""
    report = present_report(labels, data, (scores_ >= thresholds).astype(np.float32))
    return {"macro_f1": report.macro_f1, "positive_f1": report.positive_f1}


def _prior(path: Path, seeds: int) -> dict[str, float]:
    if seeds < 1:
        raise SystemExit("--prior needs --prior-seeds: how many seeds its means cover")
    return json.loads(path.read_text("utf-8"))["selection"]["mean_validation_macro_f1"]


def _mean(runs: list[dict], prior: float | None, prior_seeds: int) -> float:
    """The mean over every seed: the prior's mean stands for seeds below prior_seeds where given."""
    if prior is None:
        return float(np.mean([r["full_val_macro_f1"] for r in runs]))
    rest = [r["full_val_macro_f1"] for r in runs if r["seed"] >= prior_seeds]
    return float((prior * prior_seeds + sum(rest)) / (prior_seeds + len(rest)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cross-domain", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=mictag_home() / "experiments" / "musicnn-reprogramming",
                    help="the experiment's --work: its runs' model files are named relative to it")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache (default: the experiment's)")
    ap.add_argument("--prior", type=Path, default=None,
                    help="an earlier packaged record (mictag/data/taggers/*.json): its per-system validation means "
                         "stand for the runs of seeds below --prior-seeds whose scores and model files are gone")
    ap.add_argument("--prior-seeds", type=int, default=0, help="how many seeds (0 .. N-1) --prior's means cover")
    ap.add_argument("--dry-run", action="store_true", help="choose and report, package nothing")
    args = ap.parse_args(argv)
    if not (args.data / FULL_CSV).is_file():
        raise SystemExit(f"{args.data} has no {FULL_CSV}: choosing needs the full truth on validation")
    result = json.loads(args.results.read_text("utf-8"))
    for run in result["runs"]:
        run["model"] = str(args.work / run["model"])  # absolute names (older results) stay as they are
    cache = args.cache or args.work / "cache"
    full = corpus_splits(args.data, "full")
    prior = _prior(args.prior, args.prior_seeds) if args.prior else {}
    groups: dict[str, list[dict]] = {}
    for run in result["runs"]:
        if run["system"] in NOT_SHIPPABLE:
            continue
        group = f"{run['system']} ({run['labels']} labels)"
        value = run.get("full_val_macro_f1")
        if value is None and Path(run["model"]).is_file():
            val, data = scores(run["model"], full.val, cache)
            value = present_report(full.labels, data, val).macro_f1
        elif value is None and not (group in prior and run["seed"] < args.prior_seeds):
            raise SystemExit(f"{run['system']} {run['labels']} seed {run['seed']}: no full_val_macro_f1 in "
                             f"{args.results.name} and no model file {run['model']}; rerun it or pass --prior")
        groups.setdefault(group, []).append({**run, "full_val_macro_f1": value})
        shown = "from --prior" if value is None else f"{value:.4f}"
        print(f"{group} seed {run['seed']}: val macro F1 (full truth) {shown}", file=sys.stderr, flush=True)
    table = {g: _mean(rs, prior.get(g) if any(r["full_val_macro_f1"] is None for r in rs) else None,
                      args.prior_seeds) for g, rs in groups.items()}
    best_group = max(table, key=table.get)
    known = [r for r in groups[best_group] if r["full_val_macro_f1"] is not None and Path(r["model"]).is_file()]
    missing = sorted(r["seed"] for r in groups[best_group] if r not in known)
    if missing:  # its best seed must be known: retrain those seeds (same seed, same files) first
        raise SystemExit(f"{best_group} wins, but seeds {missing} have no score or model file here: rerun them")
    best = max(known, key=lambda r: r["full_val_macro_f1"])
    best["val_scores"], _ = scores(best["model"], full.val, cache)
    val_data = load_split(full.val, FbankCache(cache, load_model(best["model"])[0].cfg.fbank))
    thresholds = tune_thresholds(val_data.target, val_data.mask, best["val_scores"])
    test_scores, test_data = scores(best["model"], full.test, cache)
    metrics = {"validation_full_truth": summary(present_report(full.labels, val_data, best["val_scores"])),
               "test": summary(present_report(full.labels, test_data, test_scores)),
               "test_tuned_thresholds": tuned(full.labels, test_data, test_scores, thresholds)}
    if args.cross_domain:
        cross, _ = cross_domain_examples(args.data, args.cross_domain, full.labels)
        cross_scores, cross_data = scores(best["model"], cross, cache)
        metrics["cross_domain"] = summary(present_report(full.labels, cross_data, cross_scores))
        metrics["cross_domain_tuned_thresholds"] = tuned(full.labels, cross_data, cross_scores, thresholds)
    record = {
        "description": "musicnn (MTT), frozen, reprogrammed for the 20 OpenMIC classes on mictag's generated corpus",
        "corpus": result["data"]["corpus"], "seed": best["seed"], "trained_on_labels": best["labels"],
        "selection": {"rule": "best mean validation macro F1 (full truth) over seeds; its best seed",
                      "mean_validation_macro_f1": table, "excluded": NOT_SHIPPABLE,
                      "seeds": {g: sorted(r["seed"] for r in rs) for g, rs in groups.items()},
                      "validation_macro_f1": {g: {str(r["seed"]): r["full_val_macro_f1"] for r in rs
                                                  if r["full_val_macro_f1"] is not None} for g, rs in groups.items()},
                      **({"prior": {"file": args.prior.name, "seeds": args.prior_seeds}} if args.prior else {}),
                      "experiment": args.results.name},
        "thresholds_tuned_on": "the corpus's validation split, full truth",
        "metrics": metrics,
        "zero_training_baseline": {"labels": result["zero_training"]["labels"],
                                   "test": result["zero_training"]["test"],
                                   "cross_domain": result["zero_training"].get("cross_domain")},
    }
    print(json.dumps({"chosen": best_group, "seed": best["seed"], "validation": table, "metrics": metrics}, indent=1))
    if args.dry_run:
        return 0
    from mictag.export.shipped_tagger import package

    path = package(best["model"], NAME, thresholds, record)
    print(f"packaged {NAME}: {path} and its weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
