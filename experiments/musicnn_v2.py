"""The v2 study for the shipped musicnn tagger: which frozen networks, which mapper, which training
target and which thresholds make tags that hold on recordings the model never heard.

    python experiments/musicnn_features.py --data CORPUS --name corpus --out FEATS
    python experiments/musicnn_features.py --data REAL --name real --out FEATS
    python experiments/musicnn_features.py --data HELDOUT --name heldout --out FEATS
    python experiments/musicnn_v2.py --feats FEATS --corpus CORPUS --real REAL --seeds 3

Everything is scored per FILE as the scan scores it: every 3-s window of the file (the scan's
window rule), the window's sigmoid, the maximum over windows (the scan's default aggregate).

Data and how it is kept apart:
- corpus: mictag's generated corpus (train / val / test by source);
- real: sonic-pi and lmms one-shot recordings, each clip one instrument (so all 20 labels are
  known). A clip whose take the corpus's training clips play may train ("real-train"); takes
  that only validation clips play select ("real-val"); takes that only test clips play are the
  real test ("real-test"), never used for training or selection;
- heldout: clips rendered from a sample family no corpus source comes from (the csound GS bank,
  ``mictag corpus build --packages csound-soundfont``), test only;
- unseen: real recordings from packages no corpus source comes from (experiments/unseen_recordings.py:
  STK's drums, sound-icons' instruments, speech and noise as negatives), test only.

Systems (a mapper on per-window features of frozen networks): the shipped v1 tagger as it is, and
mappers trained on each feature set, with the v1 target (every window of a clip carries the
clip's labels) or the scan's own (the file's maximum over windows, a multiple-instance loss).
Threshold rules: per label on the corpus validation split, on the corpus and real validation
together, or a single 0.5. Selection: validation only (the mean of corpus-val and real-val macro
F1); the tables report every test set. Results: benchmarks/results/musicnn-v2-study.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mictag.corpus.recordings import take
from mictag.cpu import cpu_info
from mictag.labels import MTT_LABELS, OPENMIC_LABELS, openmic_mtt_map
from mictag.model.mappers import build_mapper
from mictag.train.metrics import class_f1, evaluate, tune_thresholds

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
FEATURE_SETS = {
    "MTT-musicnn": [("MTT_musicnn", "pen")],
    "MSD-musicnn": [("MSD_musicnn", "pen")],
    "MTT-vgg": [("MTT_vgg", "pen")],
    "MSD-vgg": [("MSD_vgg", "pen")],
    "MTT-musicnn-pool": [("MTT_musicnn", "pool")],
    "vgg-both": [("MTT_vgg", "pen"), ("MSD_vgg", "pen")],
    "musicnn-both": [("MTT_musicnn", "pen"), ("MSD_musicnn", "pen")],
    "all-four": [("MTT_musicnn", "pen"), ("MSD_musicnn", "pen"), ("MTT_vgg", "pen"), ("MSD_vgg", "pen")],
    "all-four+logits": [("MTT_musicnn", "pen"), ("MSD_musicnn", "pen"), ("MTT_vgg", "pen"), ("MSD_vgg", "pen"),
                        ("MTT_musicnn", "logits"), ("MSD_musicnn", "logits"), ("MTT_vgg", "logits"),
                        ("MSD_vgg", "logits")],
}


class Data:
    """One feature set's windows, files and labels for one named data set."""

    def __init__(self, feats: Path, name: str, parts: list[tuple[str, str]]):
        index = np.load(feats / name / "index.npz")
        self.window_file = index["window_file"]
        self.files = [str(f) for f in index["files"]]
        self.splits = [str(s) for s in index["splits"]]
        self.y = index["y"]
        self.x = np.concatenate([np.load(feats / name / f"{net}.npz")[what] for net, what in parts], axis=1)

    def subset(self, keep: np.ndarray) -> "Subset":
        return Subset(self, np.flatnonzero(keep))


class Subset:
    """Some files of a Data: their windows as a padded (files, windows, features) tensor."""

    def __init__(self, data: Data, files: np.ndarray):
        self.files = files
        self.y = data.y[files]
        per = [np.flatnonzero(data.window_file == f) for f in files]
        w = max((len(p) for p in per), default=1)
        self.x = np.zeros((len(files), w, data.x.shape[1]), np.float32)
        self.mask = np.zeros((len(files), w), bool)
        for i, p in enumerate(per):
            self.x[i, :len(p)] = data.x[p]
            self.mask[i, :len(p)] = True

    def __len__(self) -> int:
        return len(self.files)


def join(*subsets: Subset) -> Subset:
    out = object.__new__(Subset)
    w = max(s.x.shape[1] for s in subsets)
    pad = lambda a, fill: np.pad(a, [(0, 0), (0, w - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
    out.files = np.concatenate([s.files for s in subsets])
    out.y = np.concatenate([s.y for s in subsets])
    out.x = np.concatenate([pad(s.x, 0) for s in subsets])
    out.mask = np.concatenate([pad(s.mask, False) for s in subsets])
    return out


MAPPER_OPTIONS = {"head": ("head", {}), "mlp": ("mlp", {}), "mlp64": ("mlp", {"hidden": 64})}


def new_mapper(d: int, kind: str) -> nn.Module:
    """The package's own mapper of ``kind`` (head, mlp, mlp64: a 64-unit mlp) on ``d`` features:
    what the study trains is what ships."""
    name, options = MAPPER_OPTIONS[kind]
    return build_mapper(name, d, 0, OPENMIC_LABELS, **options)


def file_scores(model, s: Subset) -> np.ndarray:
    """The scan's file scores: max over the file's windows of the window's sigmoid (``model``: a
    module or a function of a (files, windows, features) tensor)."""
    if isinstance(model, nn.Module):
        model.eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(s.x))
        logits = logits.masked_fill(~torch.from_numpy(s.mask)[..., None], -torch.inf)
        return torch.sigmoid(logits.amax(1)).numpy()


OPTIMIZER = {"lr": 1e-3, "batch_size": 32, "weight_decay": 1e-4}  # AdamW, cosine schedule over the epochs


def train(train_set: Subset, val_sets: list[Subset], kind: str, target: str, seed: int,
          epochs: int) -> tuple[nn.Module, dict]:
    """A mapper trained on ``train_set`` (AdamW, :data:`OPTIMIZER`); the epoch with the best mean
    validation mAP is kept."""
    lr, batch, weight_decay = OPTIMIZER["lr"], OPTIMIZER["batch_size"], OPTIMIZER["weight_decay"]
    torch.manual_seed(seed)
    model = new_mapper(train_set.x.shape[2], kind)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x, mask = torch.from_numpy(train_set.x), torch.from_numpy(train_set.mask)
    y = torch.from_numpy(np.nan_to_num(train_set.y, nan=0.0))
    known = torch.from_numpy(~np.isnan(train_set.y)).float()
    rng = np.random.default_rng(seed)
    best = (-1.0, 0, None)
    for epoch in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(train_set)), max(1, len(train_set) // batch)):
            idx = torch.from_numpy(idx)
            logits = model(x[idx])
            m = mask[idx]
            if target == "mil":
                out = logits.masked_fill(~m[..., None], -1e4).amax(1)
                loss = (nn.functional.binary_cross_entropy_with_logits(out, y[idx], reduction="none") * known[idx]).mean()
            else:
                per = nn.functional.binary_cross_entropy_with_logits(
                    logits, y[idx][:, None].expand_as(logits), reduction="none")
                weight = (m[..., None] * known[idx][:, None]).float()
                loss = (per * weight).sum() / weight.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        score = float(np.mean([mean_ap(s, file_scores(model, s)) for s in val_sets]))
        if score > best[0]:
            best = (score, epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    return model, {"best_epoch": best[1], "val_map": best[0]}


def mean_ap(s: Subset, scores: np.ndarray) -> float:
    return evaluate(OPENMIC_LABELS, np.nan_to_num(s.y), ~np.isnan(s.y), scores).mean_ap


def report(s: Subset, scores: np.ndarray, thresholds) -> dict:
    r = evaluate(OPENMIC_LABELS, np.nan_to_num(s.y), ~np.isnan(s.y), scores, thresholds)
    present = np.nansum(s.y, 0) > 0
    return {"macro_f1": r.macro_f1, "present_macro_f1": float(np.nanmean(r.f1_macro[present])),
            "map": r.mean_ap, "per_label_f1": dict(zip(OPENMIC_LABELS, map(float, r.f1_macro))),
            "tagged_share": dict(zip(OPENMIC_LABELS, map(float, (scores >= np.broadcast_to(thresholds, (20,))).mean(0)))),
            "files": len(s)}


def take_roles(corpus: Path) -> dict[str, str]:
    """take -> train | val | test for the takes only one corpus split plays (train wins over the rest)."""
    used = {"train": set(), "val": set(), "test": set()}
    for line in (corpus / "clips.jsonl").read_text("utf-8").splitlines():
        clip = json.loads(line)
        for part in clip["parts"]:
            used[clip["split"]].add(take(part["source"]))
    roles = {t: "train" for t in used["train"]}
    roles.update({t: "val" for t in used["val"] - used["train"] - used["test"]})
    roles.update({t: "test" for t in used["test"] - used["train"] - used["val"]})
    return roles


def real_roles(real: Path, corpus: Path) -> dict[str, str]:
    """clip file -> its role (see the module docstring); clips of takes two splits play: none."""
    roles = take_roles(corpus)
    report_ = json.loads((real / "report.json").read_text("utf-8"))
    out = {}
    for source in report_["sources"]:
        role = roles.get(source["take"], "unused")
        for clip in source["clips"]:
            out[clip] = role
    return out


V1_COMMIT = "4e7fb0f"  # the last commit that ships musicnn-openmic20 version 1


def v1_tagger() -> tuple[nn.Module, list[float]]:
    """Version 1 of the shipped tagger (LayerNorm + Linear on MTT musicnn's 200-d layer) and its
    thresholds, read from the git history (the package now ships version 2)."""
    import subprocess
    import tempfile

    from safetensors.torch import load_file

    def show(name: str) -> bytes:
        try:
            return subprocess.run(["git", "show", f"{V1_COMMIT}:mictag/data/taggers/{name}"], check=True,
                                  capture_output=True, cwd=Path(__file__).resolve().parent).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"version 1 of the tagger is read from the git history ({V1_COMMIT}): {exc}") from None

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "v1.safetensors"
        weights.write_bytes(show("musicnn-openmic20.safetensors"))
        w = load_file(str(weights))
    model = new_mapper(200, "head")
    model.load_state_dict({k.removeprefix("mapper."): v for k, v in w.items()})
    return model, json.loads(show("musicnn-openmic20.json"))["thresholds"]


def slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in key)


SHIPPABLE_SETS = {"MTT-musicnn": "dense", "MTT-musicnn-pool": "pool"}  # one network: the scan's cost stays
SHIPPED_WEIGHTS_LIMIT = 150_000  # a mapper, not a backbone: under a fifth of the frozen musicnn (tests/test_shipped_tagger.py)


def shippable(run: dict) -> bool:
    return run.get("features") in SHIPPABLE_SETS and run.get("trainable", 0) < SHIPPED_WEIGHTS_LIMIT


def group_of(key: str) -> str:
    """A run's system: its key less the seed (features, mapper, target, training sets, thresholds rule)."""
    run, rule = key.split(" | thresholds ")
    words = run.split(" ")
    at = words.index("seed")
    return " ".join(words[:at] + words[at + 2:]) + f" | thresholds {rule}"


def choose(results: dict, models: Path) -> tuple[str, dict]:
    """v1's rule on the v2 runs: the shippable system (one network, under the weights limit) with the
    best mean selection score over its seeds, and that system's best seed. Validation only."""
    groups: dict[str, list[str]] = {}
    for key, run in results["runs"].items():
        if shippable(run) and (models / f"{slug(key.split(' | thresholds ')[0])}.pt").is_file():
            groups.setdefault(group_of(key), []).append(key)
    means = {g: float(np.mean([results["runs"][k]["selection"] for k in keys])) for g, keys in groups.items()}
    best_group = max(means, key=means.get)
    best = max(groups[best_group], key=lambda k: results["runs"][k]["selection"])
    return best, {"mean_validation_macro_f1": means, "seeds": {g: len(keys) for g, keys in groups.items()},
                  "system": best_group}


def ship(key: str, results: dict, models: Path, args) -> None:
    """Package run ``key`` ("<run> | thresholds <rule>") as the shipped musicnn-openmic20 (``--version``):
    its mapper on the frozen MTT musicnn, the rule's thresholds, and the study's record. The scores
    users get are measured afterwards through `mictag scan` (--measure)."""
    from mictag.backbones.frozen import backbone_reference
    from mictag.backbones.musicnn import MusicnnConfig
    from mictag.export.shipped_tagger import package
    from mictag.model.system import SystemConfig, build_system, frozen_backbone
    from mictag.train.checkpoint import save_model

    run = results["runs"][key]
    if not shippable(run):
        raise SystemExit(f"{key}: only a mapper on one network ({', '.join(SHIPPABLE_SETS)}; the scan's cost would grow "
                         f"with every network added) and under {SHIPPED_WEIGHTS_LIMIT:,} weights ships")
    chosen, table = choose(results, models)
    name, options = MAPPER_OPTIONS[run["mapper"]]
    cfg = SystemConfig(backbone="musicnn", musicnn=MusicnnConfig(features=SHIPPABLE_SETS[run["features"]]),
                       mapper=name, mapper_options=options)
    model = build_system(cfg, backbone=frozen_backbone(cfg, "MTT_musicnn")).eval()
    model.mapper.load_state_dict(torch.load(models / f"{slug(key.split(' | thresholds ')[0])}.pt", weights_only=True))
    recipe = {"name": "v2-study", "optimizer": "AdamW", **OPTIMIZER, "epochs": args.epochs, "schedule": "cosine", "best_epoch_by": "mean validation mAP (corpus-val, real-val)",
              "target": run["target"], "seed": run["seed"], "trained_on": run["trained_on"],
              "features": "per window as the scan cuts them (3 s, no overlap, last window padded)"}
    sets = [k for k in run if isinstance(run[k], dict) and "macro_f1" in run[k]]
    study_metrics = {name: {m: run[name][m] for m in ("macro_f1", "present_macro_f1", "map", "files")} for name in sets}
    corpora = {}
    for name in run["trained_on"]:
        spec = args.corpus if name == "corpus" else args.real if name == "real" else args.feats.parent / name
        info = spec / "corpus.json"
        if info.is_file():
            report = json.loads(info.read_text("utf-8"))
            corpora[name] = {"recipe_digest": report["recipe_digest"], "spec": report["spec"]}
        else:
            corpora[name] = {"what": "real one-shot recordings (experiments/real_instruments.py), takes only "
                                     "corpus-train clips play"}
    record = {
        "version": args.version,
        "description": "musicnn (MTT), frozen; a mapper on its pooled features trained for the 20 OpenMIC classes on "
                       f"mictag's generated corpora ({', '.join(run['trained_on'])}), with thresholds chosen on corpus "
                       "and real-recording validation",
        "corpus": corpora.get("corpus"), "trained_on": corpora, "seed": run["seed"],
        "selection": {"rule": "the system (features, mapper, target, training sets, thresholds rule) with the best "
                              "mean selection score over its seeds, then its best seed; selection score: the mean of "
                              "the corpus-val and real-val macro F1 (20 labels, file scores as the scan makes them); "
                              f"systems: one network, under {SHIPPED_WEIGHTS_LIMIT:,} weights",
                      "run": key, "rule_chose": chosen, **table, "experiment": args.out.name},
        "thresholds_tuned_on": key.split(" | thresholds ")[1],
        "study_metrics": study_metrics,
    }
    with __import__("tempfile").TemporaryDirectory() as tmp:
        model_file = save_model(Path(tmp) / "model.pt", model, cfg, backbone_reference("musicnn", "MTT_musicnn"),
                                run["thresholds"], recipe, study_metrics)
        path = package(model_file, "musicnn-openmic20", run["thresholds"], record)
    print(f"packaged {key} as musicnn-openmic20 version {args.version}: {path}")


def measure(args, roles: dict[str, str], previous: Path | None) -> None:
    """The shipped tagger's scores as users get them: `mictag models pull musicnn` builds it, `mictag
    scan` tags the corpus's test split, the real-test recordings, the held-out family and the unseen
    recordings, and the tags it wrote are scored (experiments/scan_metrics.py). Written into the
    tagger's record as ``metrics``, beside the previous version's (``previous``: a folder of its
    scans named like these, if given; keeps the scans of this version there too, under
    ``version-N``, for the next)."""
    import subprocess
    import tempfile

    from scan_metrics import metrics as scan_metrics

    from mictag.catalog.shipped import provenance_path

    subprocess.run(["mictag", "models", "pull", "musicnn"], check=True)
    real_test = {f for f, r in roles.items() if r == "test"}
    targets = {"test": (args.corpus, args.corpus / "audio" / "test", None),
               "cross_domain": (args.real, args.real / "audio", real_test)}
    if args.heldout:
        targets["held_out_family"] = (args.heldout, args.heldout / "audio", None)
    if args.unseen:
        targets["unseen_recordings"] = (args.unseen, args.unseen / "audio", None)
    path = provenance_path("musicnn-openmic20")
    record = json.loads(path.read_text("utf-8"))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        keep = args.keep_scans / f"version-{record.get('version', 1)}" if args.keep_scans else Path(tmp)
        keep.mkdir(parents=True, exist_ok=True)
        for name, (data, root, files) in targets.items():
            csv_path = keep / f"{name}.csv"
            csv_path.unlink(missing_ok=True)
            subprocess.run(["mictag", "scan", str(root), "--backbone", "musicnn", "--out", str(csv_path)], check=True)
            m = scan_metrics(csv_path, data, root, None, files)
            out[name] = {"macro_f1": m["macro_f1"], "present_macro_f1": m["present_macro_f1"], "mAP": m["map"],
                         "files": m["files"], "per_label_f1": m["per_label_f1"], "per_label_ap": m["per_label_ap"],
                         "tagged_share": m["tagged_share"], "truth_share": m["truth_share"]}
            if previous and (previous / f"{name}.csv").is_file():
                old = scan_metrics(previous / f"{name}.csv", data, root, None, files)
                out[name]["previous"] = {"version": record.get("version", 1) - 1, "macro_f1": old["macro_f1"],
                                         "present_macro_f1": old["present_macro_f1"], "mAP": old["map"],
                                         "per_label_f1": old["per_label_f1"]}
    record["metrics"] = {**out, "measured_with": "mictag scan --backbone musicnn (auto engine), tags as written",
                         "cpu": cpu_info().describe()}
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for name, m in out.items():
        before = (f" (version {m['previous']['version']} {m['previous']['macro_f1']:.3f} / {m['previous']['mAP']:.3f})"
                  if "previous" in m else "")
        print(f"{name}: macro F1 {m['macro_f1']:.3f}, mAP {m['mAP']:.3f}{before}")


MTT_MAP_LABELS = tuple(openmic_mtt_map())  # the 8 classes the zero-training map speaks for


def bootstrap_macro_f1(y: np.ndarray, tags: np.ndarray, rounds: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the OpenMIC macro F1 (the mean over labels of the mean F1 of the classes,
    positive and negative, that occur in truth or tags) over files drawn with replacement. The
    basic (reverse-percentile) interval: on a few dozen files a resample repeats files and leaves
    others out, so fewer labels meet a false tag and the resampled scores sit above the set's own;
    reflecting the percentiles about the set's score corrects that bias."""
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=rounds).astype(np.float64)
    t, p = y >= 0.5, tags
    tp, fp, fn, tn = (w @ (a & b).astype(np.float64) for a, b in ((t, p), (~t, p), (t, ~p), (~t, ~p)))
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        neg = np.where(tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), np.nan)
    per_label = np.nanmean(np.stack([pos, neg]), axis=0)
    lo, hi = np.percentile(per_label.mean(1), [2.5, 97.5])
    point = float(np.mean([class_f1(t[:, i], p[:, i])[0] for i in range(t.shape[1])]))
    return 2 * point - float(hi), 2 * point - float(lo)


def compare(args, results: dict, models: Path, keys: list[str]) -> dict:
    """The real-recording sets (real-test, unseen, both together) for the MTT map and each run
    ``keys`` ("<run> | thresholds <rule>"): macro F1 over the 20 labels with its bootstrap 95%
    interval, over the MTT map's 8 labels, and mAP. Test sets only: nothing here selects."""
    roles = real_roles(args.real, args.corpus)

    def real_sets(parts):
        real = Data(args.feats, "real", parts)
        role = np.array([roles.get(f, "unused") for f in real.files])
        out = {"real-test": real.subset(role == "test")}
        if (args.feats / "unseen" / "index.npz").is_file():
            unseen = Data(args.feats, "unseen", parts)
            out["unseen"] = unseen.subset(np.ones(len(unseen.files), bool))
            out["real-test + unseen"] = join(out["real-test"], out["unseen"])
        return out

    eight = [OPENMIC_LABELS.index(label) for label in MTT_MAP_LABELS]

    table = {}

    def score(name: str, sets: dict, scores: dict, thresholds) -> None:
        thr = np.broadcast_to(np.asarray(thresholds, np.float64), (20,))
        row = {}
        for set_name, sub in sets.items():
            y = np.nan_to_num(sub.y)
            r = evaluate(OPENMIC_LABELS, y, ~np.isnan(sub.y), scores[set_name], thr)
            tags = scores[set_name] >= thr
            row[set_name] = {"macro_f1": r.macro_f1, "ci95": bootstrap_macro_f1(y, tags),
                             "mtt8_macro_f1": float(np.mean(np.asarray(r.f1_macro)[eight])),
                             "map": r.mean_ap, "files": len(sub)}
        table[name] = row
        print(f"{name:<70}" + "  ".join(
            f"{k} {v['macro_f1']:.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] 8: {v['mtt8_macro_f1']:.3f} mAP {v['map']:.3f}"
            for k, v in row.items()), flush=True)

    # The package's zero-training map on each window's 50 MTT logits; its 8 labels, the rest never tagged.
    mapper = build_mapper("many-to-one", 0, len(MTT_LABELS), MTT_MAP_LABELS, source_map=openmic_mtt_map())
    per_window = lambda x: mapper(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # noqa: E731 (it takes (windows, 50))
    logit_sets = real_sets([("MTT_musicnn", "logits")])
    map_scores = {}
    for set_name, sub in logit_sets.items():
        out = np.zeros((len(sub), 20))
        out[:, eight] = file_scores(per_window, sub)
        map_scores[set_name] = out
    score("zero-training MTT map (its 8 labels; the other 12 never tagged)", logit_sets, map_scores, 0.5)
    for key in keys:
        run = results["runs"][key]
        sets = real_sets(FEATURE_SETS[run["features"]])
        model = new_mapper(sets["real-test"].x.shape[2], run["mapper"])
        model.load_state_dict(torch.load(models / f"{slug(key.split(' | thresholds ')[0])}.pt", weights_only=True))
        score(key, sets, {k: file_scores(model, sub) for k, sub in sets.items()}, run["thresholds"])
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feats", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--sets", nargs="*", default=list(FEATURE_SETS))
    parser.add_argument("--mappers", nargs="*", default=["head", "mlp"])
    parser.add_argument("--targets", nargs="*", default=["window", "mil"])
    parser.add_argument("--train", nargs="+", default=["corpus"],
                        help="data sets whose training split trains: corpus, real (its real-train clips), or "
                             "another corpus's features (e.g. corpus2)")
    parser.add_argument("--without-negatives", action="store_true",
                        help="leave the clips with no instrument out of the extra corpora's training splits")
    parser.add_argument("--out", type=Path, default=RESULTS / "musicnn-v2-study.json")
    parser.add_argument("--models", type=Path, default=None, help="where each run's mapper is saved (default: FEATS/models)")
    parser.add_argument("--ship", default=None, metavar="RUN",
                        help="package this run (a key of the results, with its thresholds rule) as musicnn-openmic20")
    parser.add_argument("--measure", action="store_true", help="score the shipped tagger through mictag scan")
    parser.add_argument("--heldout", type=Path, default=None, help="the held-out family's folder (for --measure)")
    parser.add_argument("--unseen", type=Path, default=None,
                        help="experiments/unseen_recordings.py's folder (for --measure)")
    parser.add_argument("--previous-scans", type=Path, default=None,
                        help="the previous version's scans of the same folders (for --measure)")
    parser.add_argument("--keep-scans", type=Path, default=None,
                        help="keep --measure's scans in KEEP/version-N (the next version's --previous-scans)")
    parser.add_argument("--version", type=int, default=None, help="the version number --ship gives the tagger")
    parser.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                        help="the real-recording test sets for the MTT map and these runs, with bootstrap intervals "
                             "(written to the results under 'real_recordings')")
    parser.add_argument("--choose", action="store_true",
                        help="print the shippable run with the best selection score (validation only)")
    args = parser.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    models = args.models or args.feats / "models"
    models.mkdir(parents=True, exist_ok=True)
    if args.choose:
        best, table = choose(results, models)
        means = table["mean_validation_macro_f1"]
        print(f"{best}\tits system's mean selection {means[table['system']]:.4f} over {table['seeds'][table['system']]} "
              f"seeds; this seed {results['runs'][best]['selection']:.4f} ({len(means)} shippable systems)")
        return
    if args.ship:
        if args.version is None:
            parser.error("--ship needs --version (the shipped tagger's next version number)")
        return ship(args.ship, results, models, args)
    if args.compare:
        results["real_recordings"] = compare(args, results, models, args.compare)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        return
    results.update({"cpu": cpu_info().describe(), "python": platform.python_version(), "torch": torch.__version__})
    roles = real_roles(args.real, args.corpus)
    if args.measure:
        return measure(args, roles, args.previous_scans)
    test_only = [name for name in ("heldout", "unseen") if (args.feats / name / "index.npz").is_file()]

    def sets_for(parts):
        corpus, real = Data(args.feats, "corpus", parts), Data(args.feats, "real", parts)
        role = np.array([roles.get(f, "unused") for f in real.files])
        split = np.array(corpus.splits)
        out = {"corpus-train": corpus.subset(split == "train"), "corpus-val": corpus.subset(split == "val"),
               "corpus-test": corpus.subset(split == "test"), "real-train": real.subset(role == "train"),
               "real-val": real.subset(role == "val"), "real-test": real.subset(role == "test")}
        for name in test_only:
            held = Data(args.feats, name, parts)
            out[name] = held.subset(np.ones(len(held.files), bool))
        for extra in (name for name in args.train if name not in ("corpus", "real")):
            more = Data(args.feats, extra, parts)
            keep = np.array(more.splits) == "train"
            if args.without_negatives:  # the clips no instrument plays (all labels 0) left out
                keep &= np.nansum(more.y, axis=1) > 0
            out[f"{extra}-train"] = more.subset(keep)
        return out

    def evaluate_all(model, sets, key, extra):
        scores = {name: file_scores(model, s) for name, s in sets.items()}
        rules = {"0.5": np.full(20, 0.5)}
        v = sets["corpus-val"]
        rules["corpus-val"] = tune_thresholds(np.nan_to_num(v.y), ~np.isnan(v.y), scores["corpus-val"])
        mixed = join(sets["corpus-val"], sets["real-val"])
        rules["corpus+real-val"] = tune_thresholds(np.nan_to_num(mixed.y), ~np.isnan(mixed.y),
                                                   np.concatenate([scores["corpus-val"], scores["real-val"]]))
        if "v1" in extra:
            rules["v1-shipped"] = np.asarray(extra.pop("v1"))
        for rule, thr in rules.items():
            entry = {**extra, "thresholds": [float(t) for t in thr],
                     **{name: report(s, scores[name], thr) for name, s in sets.items() if not name.endswith("-train")}}
            entry["selection"] = float(np.mean([entry["corpus-val"]["macro_f1"], entry["real-val"]["macro_f1"]]))
            results["runs"][f"{key} | thresholds {rule}"] = entry
            print(f"{key:<48} {rule:<16} sel {entry['selection']:.3f}  corpus-test {entry['corpus-test']['macro_f1']:.3f}"
                  f"/{entry['corpus-test']['map']:.3f}  real-test {entry['real-test']['macro_f1']:.3f}"
                  f"/{entry['real-test']['present_macro_f1']:.3f}"
                  + "".join(f"  {name} {entry[name]['macro_f1']:.3f}/{entry[name]['map']:.3f}" for name in test_only),
                  flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")

    sets = sets_for(FEATURE_SETS["MTT-musicnn"])
    print({k: len(v) for k, v in sets.items()})
    v1, v1_thresholds = v1_tagger()
    evaluate_all(v1, sets, "v1 shipped (MTT-musicnn head, first-window target)", {"v1": v1_thresholds})
    for set_name in args.sets:
        sets = sets_for(FEATURE_SETS[set_name])
        train_set = join(*(sets[f"{name}-train"] for name in args.train))
        for kind in args.mappers:
            for target in args.targets:
                for seed in range(args.seeds):
                    key = f"{set_name} {kind} {target} seed {seed}" + "".join(f" +{n}" for n in args.train if n != "corpus")
                    key += " (no negatives)" if args.without_negatives else ""
                    if any(k.startswith(key + " |") for k in results["runs"]):
                        continue
                    t0 = time.perf_counter()
                    model, info = train(train_set, [sets["corpus-val"], sets["real-val"]], kind, target, seed, args.epochs)
                    info["seconds"] = time.perf_counter() - t0
                    torch.save(model.state_dict(), models / f"{slug(key)}.pt")
                    info["trainable"] = sum(p.numel() for p in model.parameters())
                    evaluate_all(model, sets, key, {**info, "features": set_name, "mapper": kind, "target": target,
                                                    "seed": seed, "trained_on": args.train})


if __name__ == "__main__":
    main()
