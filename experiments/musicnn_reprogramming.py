"""The paper's Figure 4 on our own machines: reprogramming a frozen, pretrained musicnn (MTT) on real
recorded single-instrument audio (see experiments/real_instruments.py for the data set).

    python experiments/real_instruments.py --out /tmp/realinst
    mictag models pull musicnn
    python experiments/musicnn_reprogramming.py --data /tmp/realinst [--seeds 3] [--epochs 20]

Systems: the zero-training many-to-one tagger (MagnaTagATune tags -> OpenMIC, no training; it can
only speak for the labels MTT has a tag for), musicnn-BS (mapper only), -NRP, -CNNRP and -URP,
each over ``--seeds`` seeds, one recipe for all. Reports the OpenMIC-protocol macro F1 and mAP on
the test split, over every label and over the labels the zero-training map can express, with
trainable-parameter counts. Writes benchmarks/results/musicnn-reprogramming-<time>.json.
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
from mictag.model.fbank import FrameFinish
from mictag.model.mappers import ManyToOneMapper
from mictag.paths import mictag_home
from mictag.train.cache import FbankCache
from mictag.train.data import open_dataset
from mictag.train.metrics import evaluate, tune_thresholds
from mictag.train.recipes import get_recipe
from mictag.train.trainer import Trainer, TrainSpec, load_split

# name -> (reprogrammer, its options): the paper's four, then the initialisations that start from the
# plain backbone (the defaults follow the authors' code: N(0, 1) noise, PyTorch's conv init).
SYSTEMS = {"musicnn-BS": ("none", {}), "musicnn-NRP": ("noise", {}), "musicnn-CNNRP": ("cnn", {}),
           "musicnn-URP": ("unet", {}), "musicnn-NRP-zeros": ("noise", {"init": "zeros"}),
           "musicnn-CNNRP-identity": ("cnn", {"init": "identity"})}
PAPER = ["musicnn-BS", "musicnn-NRP", "musicnn-CNNRP", "musicnn-URP"]
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def zero_training(data: str, source: str, cache: Path) -> dict:
    """The many-to-one tagger's test scores on the labels it can express."""
    splits = open_dataset(data, "folder")
    table = openmic_source_map("musicnn")
    labels = [label for label in splits.labels if label in table]
    cols = [splits.labels.index(label) for label in labels]
    backbone = load_backbone("musicnn", source)
    mapper = ManyToOneMapper(backbone.num_classes, [table[label] for label in labels])
    frontend = frontend_for("musicnn", backbone.cfg)
    finish = FrameFinish(frontend, normalize=False)
    scores, data = {}, {}
    for split in ("val", "test"):
        data[split] = load_split(splits.split(split), FbankCache(cache, frontend))
        with torch.inference_mode():
            frames, valid, _, _ = data[split].batch(np.arange(len(data[split])))
            scores[split] = torch.sigmoid(mapper(backbone(finish(frames, valid)))).numpy()
    val, test = data["val"], data["test"]
    report = evaluate(labels, test.target[:, cols], test.mask[:, cols], scores["test"])
    # MTT's tag probabilities are calibrated to MTT's tag frequencies, not to 0.5: also report
    # thresholds tuned on the validation split, as the trained systems get them.
    thresholds = tune_thresholds(val.target[:, cols], val.mask[:, cols], scores["val"])
    tuned = evaluate(labels, test.target[:, cols], test.mask[:, cols], scores["test"], thresholds)
    return {"source": str(source), "labels": labels, **report.summary(), "tuned_macro_f1": tuned.macro_f1,
            "per_instrument_f1": dict(zip(labels, map(float, report.f1_macro)))}


def train_system(name: str, reprogrammer: tuple[str, dict], args, seed: int, splits, expressible: list[str]) -> dict:
    recipe = get_recipe("paper", lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=seed)
    spec = TrainSpec(data=args.data, source=args.musicnn, backbone="musicnn", fmt="folder", recipe=recipe,
                     out=str(args.work / f"{name}-seed{seed}"), reprogrammer=reprogrammer[0],
                     reprogrammer_options=reprogrammer[1], mapper="head",
                     cache_dir=str(args.cache), device="cpu")
    t0 = time.perf_counter()
    trainer = Trainer(spec, splits, progress=lambda m: print(f"  [{name} seed {seed}] {m}", file=sys.stderr))
    result = trainer.run()
    report = result["report"]
    idx = [report.labels.index(label) for label in expressible]
    return {"seed": seed, "trainable": trainer.model.num_trainable(), "seconds": time.perf_counter() - t0,
            "best_epoch": result["metrics"]["best_epoch"], **report.summary(),
            "tuned_macro_f1": result["metrics"]["test_tuned_thresholds"]["macro_f1"],
            "expressible_macro_f1": float(np.nanmean(report.f1_macro[idx])),
            "expressible_mAP": float(np.nanmean(report.ap[idx])),
            "per_instrument_f1": dict(zip(report.labels, map(float, report.f1_macro)))}


def mean_std(runs: list[dict], key: str) -> tuple[float, float]:
    values = np.array([r[key] for r in runs], np.float64)
    return float(values.mean()), float(values.std())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the folder data set (labels.csv with a split column)")
    ap.add_argument("--musicnn", default="MTT_musicnn", help="musicnn model in the cache, or a .safetensors file")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--systems", nargs="*", default=PAPER, choices=list(SYSTEMS),
                    help="systems to train (none: only the zero-training tagger)")
    ap.add_argument("--work", type=Path, default=mictag_home() / "experiments" / "musicnn-reprogramming")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.cache = args.work / "cache"

    splits = open_dataset(args.data, "folder")
    zero = zero_training(args.data, args.musicnn, args.cache)
    print(f"zero-training many-to-one on {', '.join(zero['labels'])}: macro F1 {zero['macro_f1']:.3f}, "
          f"mAP {zero['mAP']:.3f}", file=sys.stderr)
    systems = {}
    for name in args.systems:
        runs = [train_system(name, SYSTEMS[name], args, seed, splits, zero["labels"]) for seed in range(args.seeds)]
        systems[name] = {"trainable": runs[0]["trainable"], "runs": runs,
                         **{f"{k}_mean_std": mean_std(runs, k) for k in
                            ("macro_f1", "tuned_macro_f1", "mAP", "expressible_macro_f1", "expressible_mAP")}}
        print(f"{name}: macro F1 {systems[name]['macro_f1_mean_std']}", file=sys.stderr)
    counts = {s: {"clips": len(splits.split(s)),
                  "positives": dict(zip(splits.labels, map(int, np.sum([e.target for e in splits.split(s)], 0))))}
              for s in ("train", "val", "test")}
    result = {
        "benchmark": "musicnn-reprogramming", "mictag_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "backbone": backbone_reference("musicnn", args.musicnn), "data": {"labels": list(splits.labels), **counts},
        "recipe": get_recipe("paper", lr=args.lr, epochs=args.epochs, batch_size=args.batch_size).to_dict(),
        "zero_training": zero, "systems": systems,
    }
    out = args.out or RESULTS / f"musicnn-reprogramming-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"written to {out}")
    return 0


def table(result: dict) -> str:
    z = result["zero_training"]
    rows = ["| system | trainable | macro F1 (all labels) | tuned thresholds | mAP (all) | macro F1 (expressible) "
            "| mAP (expressible) |", "|---|---|---|---|---|---|---|",
            f"| many-to-one, no training | 0 | — | — | — | {z['macro_f1']:.3f} (tuned {z['tuned_macro_f1']:.3f}) "
            f"| {z['mAP']:.3f} |"]
    for name, s in result["systems"].items():
        cells = [f"{s[f'{k}_mean_std'][0]:.3f} ± {s[f'{k}_mean_std'][1]:.3f}"
                 for k in ("macro_f1", "tuned_macro_f1", "mAP", "expressible_macro_f1", "expressible_mAP")]
        rows.append(f"| {name} | {s['trainable']:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
