"""What users get: OpenMIC macro F1 of the tags `mictag scan` wrote, and mAP of its scores, against
a labelled folder's truth (the `tags` column decides, so thresholds and aggregation are the scan's):

    mictag scan DATA/audio --backbone musicnn --out tags.csv
    python experiments/scan_metrics.py --scan tags.csv --data DATA [--root DATA/audio] [--split test] [--files LIST]

A folder whose labels CSV names fewer than the 20 classes (single-instrument recordings) counts
the missing classes as negatives. Prints the table and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from musicnn_features import read_labels
from mictag.labels import OPENMIC_LABELS
from mictag.train.metrics import evaluate


def scan_rows(path: Path, root: Path) -> dict[str, dict]:
    """The scan's rows by resolved path (rows name files relative to the scanned folder ``root``)."""
    with path.open(newline="", encoding="utf-8") as f:
        return {str((root / r["path"]).resolve()): r for r in csv.DictReader(f)}


def metrics(scan: Path, data: Path, root: Path, split: str | None = None, files: set[str] | None = None) -> dict:
    csv_name = "labels-full.csv" if (data / "labels-full.csv").is_file() else "labels.csv"
    names, splits, y = read_labels(data / csv_name)
    rows = scan_rows(scan, root)
    first = next(iter(rows.values()), {})
    labels = [label for label in OPENMIC_LABELS if label in first]  # a zero-training map speaks for 8
    y = y[:, [OPENMIC_LABELS.index(label) for label in labels]]
    keep, scores, tagged, missing = [], [], [], []
    for i, (name, s) in enumerate(zip(names, splits)):
        if (split and s != split) or (files is not None and name not in files):
            continue
        row = rows.get(str((data / name).resolve()))
        if row is None or row.get("status") not in ("ok", "partial"):
            missing.append(name)
            continue
        keep.append(i)
        scores.append([float(row[label]) for label in labels])
        tags = set(filter(None, row["tags"].split(";")))
        tagged.append([label in tags for label in labels])
    y = y[keep]
    scores, tagged = np.asarray(scores), np.asarray(tagged)
    known = ~np.isnan(y)
    # The tags are the decision: score 1 where tagged, 0 where not, at threshold 0.5.
    decided = evaluate(labels, np.nan_to_num(y), known, tagged.astype(np.float32))
    ranked = evaluate(labels, np.nan_to_num(y), known, scores)
    present = np.nansum(y, 0) > 0
    return {"files": len(keep), "missing": missing, "labels": labels, "macro_f1": decided.macro_f1,
            "present_macro_f1": float(np.nanmean(decided.f1_macro[present])), "map": ranked.mean_ap,
            "per_label_f1": dict(zip(labels, map(float, decided.f1_macro))),
            "per_label_ap": dict(zip(labels, map(float, ranked.ap))),
            "tagged_share": dict(zip(labels, map(float, tagged.mean(0)))),
            "truth_share": dict(zip(labels, map(float, np.nanmean(y, 0))))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scan", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=None, help="the folder the scan scanned (default: DATA/audio)")
    parser.add_argument("--split", default=None)
    parser.add_argument("--files", type=Path, default=None, help="a text file of the folder's files to score")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    files = set(args.files.read_text("utf-8").split()) if args.files else None
    m = metrics(args.scan, args.data, args.root or args.data / "audio", args.split, files)
    print(f"{m['files']} files ({len(m['missing'])} without a row): macro F1 {m['macro_f1']:.3f} "
          f"(present labels {m['present_macro_f1']:.3f}), mAP {m['map']:.3f}")
    for label in m["labels"]:
        print(f"  {label:<18} F1 {m['per_label_f1'][label]:.3f}  AP {m['per_label_ap'][label]:.3f}  "
              f"tagged {m['tagged_share'][label]:.2f}  truth {m['truth_share'][label]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(m, indent=1) + "\n")


if __name__ == "__main__":
    main()
