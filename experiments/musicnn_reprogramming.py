"""The paper's Figure 4 for a frozen, pretrained musicnn (MTT): every system on one data set, over
several seeds, with the same recipe.

On the generated corpus (``mictag corpus build``; train on its OpenMIC-style masked labels, test
on the full truth, cross-domain test on the real recordings whose takes only the corpus's test
clips use):

    mictag corpus build --out CORPUS
    python experiments/real_instruments.py --out REAL
    mictag models pull musicnn
    python experiments/musicnn_reprogramming.py --data CORPUS --cross-domain REAL --seeds 3 --epochs 2

On a plain labelled folder (e.g. the real-recordings set alone) it trains and tests on the folder's
labels and splits.

Systems: the zero-training many-to-one tagger (MTT tags -> OpenMIC, no training; it speaks only
for the labels MTT has a tag for), musicnn-BS (mapper only, on cached backbone outputs),
-NRP (N(0, 1) and zeros init), -CNNRP (default and identity init), -URP, -TL (the whole network
fine-tuned) and CNN-BS (a CNN of the reprogrammers' size, from scratch). BS and URP also train on
the full labels. Runs go seed by seed, each written to the results JSON as it ends; a rerun with
the same --out skips the runs already there. Each run also records its validation macro F1 on the
full truth (``full_val_macro_f1``), which ship_musicnn_openmic20.py chooses on. Reports the
OpenMIC-protocol macro F1 and mAP, also over the labels the zero-training map can express, and
trainable-parameter counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mictag import __version__
from mictag.backbones.frozen import backbone_reference, frontend_for, load_backbone, openmic_source_map
from mictag.corpus.recordings import take
from mictag.cpu import cpu_info
from mictag.model.fbank import FrameFinish
from mictag.model.mappers import ManyToOneMapper
from mictag.paths import mictag_home
from mictag.train.cache import FbankCache
from mictag.train.data import Example, Splits, open_folder
from mictag.train.metrics import Report, evaluate, tune_thresholds
from mictag.train.recipes import get_recipe
from mictag.train.trainer import Tensors, Trainer, TrainSpec, load_split

# name -> TrainSpec fields. The defaults follow the authors' code: N(0, 1) noise, PyTorch's conv
# init; the -zeros / -identity rows start from the plain backbone.
SYSTEMS = {
    "musicnn-BS": {"reprogrammer": "none"},
    "musicnn-NRP": {"reprogrammer": "noise"},
    "musicnn-NRP-zeros": {"reprogrammer": "noise", "reprogrammer_options": {"init": "zeros"}},
    "musicnn-CNNRP": {"reprogrammer": "cnn"},
    "musicnn-CNNRP-identity": {"reprogrammer": "cnn", "reprogrammer_options": {"init": "identity"}},
    "musicnn-URP": {"reprogrammer": "unet"},
    "musicnn-TL": {"baseline": "finetune"},
    "CNN-BS": {"baseline": "cnn-bs"},
}
# (system, labels trained on): every system on the masked labels, BS and URP on the full ones too.
PLAN = [(name, "masked") for name in SYSTEMS] + [("musicnn-BS", "full"), ("musicnn-URP", "full")]
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
MASKED_CSV, FULL_CSV = "labels.csv", "labels-full.csv"


def corpus_splits(data: Path, labels: str) -> Splits:
    """Train/val with the chosen labels; test always with the truth where the folder has it."""
    given = open_folder(data / MASKED_CSV)
    if not (data / FULL_CSV).is_file():
        if labels == "full":
            raise SystemExit(f"{data} has no {FULL_CSV}: it cannot train on full labels")
        return given
    full = open_folder(data / FULL_CSV)
    chosen = full if labels == "full" else given
    return Splits(labels=full.labels, train=chosen.train, val=chosen.val, test=full.test)


def cross_domain_examples(data: Path, real: Path, labels: tuple[str, ...]) -> tuple[list[Example], list[str]]:
    """The real recordings (experiments/real_instruments.py's clips) whose take only the corpus's
    test clips play: unheard in training and validation. Single-instrument clips, so every label
    is known (1 for theirs, 0 for the rest)."""
    used = {"train": set(), "val": set(), "test": set()}
    with (data / "clips.jsonl").open(encoding="utf-8") as f:
        for line in f:
            clip = json.loads(line)
            for part in clip["parts"]:
                used[clip["split"]].add(take(part["source"]))
    held = used["test"] - used["train"] - used["val"]
    report = json.loads((real / "report.json").read_text("utf-8"))
    out, takes = [], []
    for source in report["sources"]:
        if source["take"] not in held or source["label"] not in labels:
            continue
        takes.append(source["take"])
        target = np.array([float(label == source["label"]) for label in labels], np.float32)
        for clip in source["clips"]:
            out.append(Example(clip, real / clip, target, np.ones(len(labels), bool)))
    return out, sorted(set(takes))


def present_report(labels, tensors: Tensors, scores: np.ndarray, columns: list[int] | None = None) -> Report:
    """The OpenMIC report over the labels with a positive here (others would score their easy
    negatives), optionally only over ``columns``."""
    mask = tensors.mask & (tensors.target.sum(0) > 0)[None, :]
    if columns is not None:
        keep = np.zeros(len(labels), bool)
        keep[columns] = True
        mask = mask & keep[None, :]
    return evaluate(labels, tensors.target, mask, scores)


def summary(report: Report) -> dict:
    return {**report.summary(), "per_instrument_f1": {label: float(f) for label, f in zip(report.labels, report.f1_macro)
                                                       if not np.isnan(f)}}


def zero_training(args, splits: Splits, cross: list[Example]) -> dict:
    """The many-to-one tagger's scores on the labels it can express."""
    table = openmic_source_map("musicnn")
    labels = [label for label in splits.labels if label in table]
    cols = [splits.labels.index(label) for label in labels]
    backbone = load_backbone("musicnn", args.musicnn)
    mapper = ManyToOneMapper(backbone.num_classes, [table[label] for label in labels])
    frontend = frontend_for("musicnn", backbone.cfg)
    finish = FrameFinish(frontend, normalize=False)
    cache = FbankCache(args.cache, frontend)
    sets = {"val": splits.val, "test": splits.test, **({"cross": cross} if cross else {})}
    data, scores = {}, {}
    for name, examples in sets.items():
        data[name] = load_split(examples, cache)
        full = np.full((len(examples), len(splits.labels)), 0.0, np.float32)
        with torch.inference_mode():
            for start in range(0, len(examples), 64):
                frames, valid, _, _ = data[name].batch(np.arange(start, min(start + 64, len(examples))))
                full[start : start + len(frames), cols] = torch.sigmoid(mapper(backbone(finish(frames, valid)))).numpy()
        scores[name] = full
    # MTT's tag probabilities are calibrated to MTT's tag frequencies, not to 0.5: also report
    # thresholds tuned on the validation split, as the trained systems get them.
    val = data["val"]
    thresholds = np.full(len(splits.labels), 0.5)
    thresholds[cols] = tune_thresholds(val.target[:, cols], val.mask[:, cols], scores["val"][:, cols])
    test = data["test"]
    out = {"labels": labels, "test": summary(present_report(splits.labels, test, scores["test"], cols)),
           "test_tuned_macro_f1": present_report(splits.labels, test, (scores["test"] >= thresholds).astype(np.float32),
                                                 cols).macro_f1}
    if cross:
        out["cross_domain"] = summary(present_report(splits.labels, data["cross"], scores["cross"], cols))
    return out


def train_run(args, name: str, labels: str, seed: int, splits: Splits, cross: list[Example],
              expressible: list[int], full_val: list[Example] | None = None) -> dict:
    recipe = get_recipe("paper", lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=seed)
    fields = SYSTEMS[name]
    spec = TrainSpec(data=str(args.data), source=args.musicnn, backbone="musicnn", fmt="folder", recipe=recipe,
                     out=str(args.work / f"{name}-{labels}-seed{seed}"), reprogrammer=fields.get("reprogrammer", "none"),
                     reprogrammer_options=fields.get("reprogrammer_options", {}), baseline=fields.get("baseline"),
                     mapper="head", cache_dir=str(args.cache), device="cpu", precision=args.precision)
    t0 = time.perf_counter()
    trainer = Trainer(spec, splits, progress=lambda m: print(f"  [{name} {labels} seed {seed}] {m}", file=sys.stderr,
                                                             flush=True))
    result = trainer.run()
    test = load_split(splits.test, trainer.fbank_cache)
    test_scores = trainer.scores(test)
    run = {"system": name, "labels": labels, "seed": seed, "trainable": trainer.model.num_trainable(),
           "seconds": time.perf_counter() - t0, "best_epoch": result["metrics"]["best_epoch"],
           "val_macro_f1": result["metrics"]["val_macro_f1"], "model": _relative(result["model"], args.work),
           "epoch_seconds": [h["seconds"] for h in result["history"]],
           "val_history": [h["val_macro_f1"] for h in result["history"]],  # the budget curve
           "test": summary(present_report(splits.labels, test, test_scores)),
           "test_tuned_macro_f1": result["metrics"]["test_tuned_thresholds"]["macro_f1"],
           "test_expressible": present_report(splits.labels, test, test_scores, expressible).summary()}
    if cross:
        data = load_split(cross, trainer.fbank_cache)
        scores = trainer.scores(data)
        run["cross_domain"] = summary(present_report(splits.labels, data, scores))
        run["cross_domain_expressible"] = present_report(splits.labels, data, scores, expressible).summary()
    if full_val:  # the shipped tagger is chosen on this: every system on the same labels, no model file needed
        data = load_split(full_val, trainer.fbank_cache)
        run["full_val_macro_f1"] = present_report(splits.labels, data, trainer.scores(data)).macro_f1
    return run


def _relative(path: str, work: Path) -> str:
    """A run's model file relative to --work (the results name no machine's folders)."""
    try:
        return str(Path(path).relative_to(work))
    except ValueError:
        return Path(path).name


def aggregate(runs: list[dict]) -> dict:
    """mean and std over seeds per (system, labels)."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(f"{run['system']} ({run['labels']} labels)", []).append(run)
    keys = [("test", "macro_f1"), ("test", "mAP"), ("test_tuned_macro_f1", None), ("test_expressible", "macro_f1"),
            ("cross_domain", "macro_f1"), ("cross_domain", "mAP"), ("val_macro_f1", None), ("seconds", None)]
    order = {f"{name} ({labels} labels)": i for i, (name, labels) in enumerate(PLAN)}
    out = {}
    for group, members in sorted(groups.items(), key=lambda item: order.get(item[0], len(order))):
        row = {"seeds": len(members), "trainable": members[0]["trainable"]}
        for outer, inner in keys:
            values = [r[outer] if inner is None else r[outer][inner] for r in members if outer in r]
            if values:
                row[f"{outer}.{inner}" if inner else outer] = [float(np.mean(values)), float(np.std(values))]
        out[group] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a corpus (mictag corpus build) or a labelled folder")
    ap.add_argument("--cross-domain", type=Path, default=None,
                    help="experiments/real_instruments.py's output: test on its recordings unheard in training")
    ap.add_argument("--musicnn", default="MTT_musicnn", help="musicnn model in the cache, or a .safetensors file")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--systems", nargs="*", default=None, choices=list(SYSTEMS),
                    help="train only these (default: the whole plan; none: only the zero-training tagger)")
    ap.add_argument("--labels", nargs="*", default=None, choices=["masked", "full"],
                    help="train only on these labels (default: the plan's, masked and full)")
    ap.add_argument("--work", type=Path, default=mictag_home() / "experiments" / "musicnn-reprogramming")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (runs already in it are skipped)")
    ap.add_argument("--table", action="store_true", help="print the table of --out's runs so far and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text("utf-8"))))
        return 0
    if args.data is None:
        ap.error("--data is required")
    args.cache = args.work / "cache"
    out = args.out or RESULTS / f"musicnn-reprogramming-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    has_truth = (args.data / FULL_CSV).is_file()
    plan = [(s, v) for s, v in PLAN if (args.systems is None or s in args.systems)
            and (args.labels is None or v in args.labels) and (has_truth or v == "masked")]

    splits = {variant: corpus_splits(args.data, variant) for variant in {v for _, v in plan} | {"masked"}}
    labels = splits["masked"].labels
    cross, takes = cross_domain_examples(args.data, args.cross_domain, labels) if args.cross_domain else ([], [])
    previous = json.loads(out.read_text("utf-8")) if out.is_file() else {}
    runs = previous.get("runs", [])
    done = {(r["system"], r["labels"], r["seed"]) for r in runs}
    result = {
        "benchmark": "musicnn-reprogramming", "mictag_version": __version__,
        "machine": {"platform": platform.platform(), "cpu": cpu_info().describe(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "backbone": backbone_reference("musicnn", args.musicnn),
        "data": {"name": args.data.name, "labels": list(labels), "test_labels": "full truth" if has_truth else "given",
                 "corpus": _corpus_recipe(args.data),
                 **{s: {"clips": len(splits["masked"].split(s)),
                        "known_labels": int(sum(e.mask.sum() for e in splits["masked"].split(s)))}
                    for s in ("train", "val", "test")},
                 "cross_domain": {"clips": len(cross), "takes": takes}},
        "recipe": get_recipe("paper", lr=args.lr, epochs=args.epochs, batch_size=args.batch_size).to_dict(),
    }
    result["zero_training"] = previous.get("zero_training") or zero_training(args, splits["masked"], cross)
    z = result["zero_training"]
    print(f"zero-training many-to-one on {', '.join(z['labels'])}: test macro F1 {z['test']['macro_f1']:.3f}, "
          f"mAP {z['test']['mAP']:.3f}", file=sys.stderr, flush=True)
    expressible = [labels.index(label) for label in z["labels"]]

    def write() -> None:  # the plan and seeds of every run in the file, this invocation's and earlier ones'
        result["runs"] = runs
        trained = {(r["system"], r["labels"]) for r in runs} | set(plan)
        result["plan"] = [list(p) for p in PLAN if p in trained]
        result["seeds"] = {f"{s} ({v} labels)": sorted(r["seed"] for r in runs if (r["system"], r["labels"]) == (s, v))
                           for s, v in PLAN if (s, v) in trained}
        result["systems"] = aggregate(runs)
        result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)

    write()
    full_val = corpus_splits(args.data, "full").val if has_truth else None
    for seed in range(args.seeds):  # seed by seed: a cut-short run still has every system
        for name, variant in plan:
            if (name, variant, seed) in done:
                continue
            run = train_run(args, name, variant, seed, splits[variant], cross, expressible, full_val)
            runs.append(run)
            write()
            print(f"{name} ({variant}) seed {seed}: test macro F1 {run['test']['macro_f1']:.3f} mAP "
                  f"{run['test']['mAP']:.3f}, {run['seconds']:.0f} s", file=sys.stderr, flush=True)
    print(table(result))
    print(f"written to {out}")
    return 0


def _corpus_recipe(data: Path) -> dict | None:
    meta = data / "corpus.json"
    if not meta.is_file():
        return None
    corpus = json.loads(meta.read_text("utf-8"))
    return {"recipe_digest": corpus.get("recipe_digest"), "spec": corpus.get("spec")}


def table(result: dict) -> str:
    """The results as a markdown table (mean ± std over seeds)."""
    def cell(row: dict, key: str) -> str:
        return f"{row[key][0]:.3f} ± {row[key][1]:.3f}" if key in row else "—"

    z = result["zero_training"]
    rows = ["| system | labels | trainable | seeds | macro F1 | mAP | tuned F1 | F1 (expressible) | cross-domain F1 "
            "| cross-domain mAP | s/run |", "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| many-to-one, no training | — | 0 | — | — | — | — | {z['test']['macro_f1']:.3f} (tuned "
            f"{z['test_tuned_macro_f1']:.3f}) | "
            + (f"{z['cross_domain']['macro_f1']:.3f} | {z['cross_domain']['mAP']:.3f}" if "cross_domain" in z else "— | —")
            + " | 0 |"]
    for group, row in result["systems"].items():
        name, labels = group.split(" (")
        rows.append(f"| {name} | {labels.split()[0]} | {row['trainable']:,} | {row['seeds']} | "
                    + " | ".join(cell(row, k) for k in ("test.macro_f1", "test.mAP", "test_tuned_macro_f1",
                                                         "test_expressible.macro_f1", "cross_domain.macro_f1",
                                                         "cross_domain.mAP"))
                    + f" | {row['seconds'][0]:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
