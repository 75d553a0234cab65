"""How far every fast CPU path is from fp32, on real recordings: max and mean |probability
difference| per file (scores aggregated over windows, as the scan writes them) and the share of
files whose tag set changes, against ONNX Runtime fp32 on the same model.

    python experiments/fast_path_accuracy.py --audio DIR [--audio DIR2 ...] [--ast-audio DIR] [--ast-limit 150]

Models: the musicnn zero-training tagger with its REAL weights (`mictag models pull musicnn`
first), and the AST zero-training tagger with random weights (none can be downloaded here: its
numbers bound the arithmetic, not the tags a trained AST would give). Paths, where this CPU and
environment have them: OpenVINO fp32 / bf16 / int8 (+bf16), ONNX Runtime int8 static (calibrated
on synthetic signals, as `mictag models pull` does) and int8 dynamic, torch fp32 / bf16 (and bf16
with blocked attention for the AST). Results go to benchmarks/results/fast-path-accuracy-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import save_result  # noqa: E402

from mictag.cpu import cpu_info  # noqa: E402

AUDIO = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".m4a")


def _files(dirs: list[Path], limit: int | None) -> list[Path]:
    files = sorted(p for d in dirs for p in d.rglob("*") if p.suffix.lower() in AUDIO and p.is_file())
    if limit and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).astype(int)]
    return files


def build(backbone: str, work: Path) -> dict[str, Path]:
    """fp32 ONNX (fbank input, as the default tagger), its int8 variants and a torch artifact."""
    import torch

    from mictag.export.onnx import convert_precision, export_onnx, metadata, write_int8
    from mictag.export.torch_artifact import save_torch_artifact
    from mictag.export.zero_training import zero_training_tagger
    from mictag.model.system import SystemConfig, build_system

    if backbone == "musicnn":
        system, extra = zero_training_tagger("MTT_musicnn", backbone="musicnn")
    else:
        torch.manual_seed(0)
        system = build_system(SystemConfig(reprogrammer="none", mapper="many-to-one")).eval()
        extra = {}
    meta = metadata(system, [0.5] * len(system.cfg.labels), {**extra, "precision": "fp32"}, "fbank")
    out = {"fp32": export_onnx(system, work / f"{backbone}.onnx", meta, "fbank")}
    out["int8"], record = write_int8(out["fp32"], meta)
    dyn = export_onnx(system, work / f"{backbone}-dyn.onnx", meta, "fbank")
    out["int8-dynamic"], _ = convert_precision(dyn, meta, "int8-dynamic")
    out["torch"] = save_torch_artifact(system, work / f"{backbone}.pt", metadata(system, meta["thresholds"], extra, "waveform"))
    out["int8_record"] = record
    return out


def paths(backbone: str, built: dict) -> dict[str, dict]:
    """name -> Tagger arguments."""
    bf16 = cpu_info().bf16 is not None
    has_ov = __import__("importlib").util.find_spec("openvino") is not None
    p = {}
    if has_ov:
        p["openvino fp32"] = dict(model=built["fp32"], backend="openvino", precision="fp32")
        if bf16:
            p["openvino bf16"] = dict(model=built["fp32"], backend="openvino", precision="bf16")
        p["openvino int8" + ("+bf16" if bf16 else "")] = dict(model=built["fp32"], backend="openvino", precision="int8")
    p["ort-cpu int8 static"] = dict(model=built["fp32"], backend="ort-cpu", precision="int8")
    p["ort-cpu int8 dynamic"] = dict(model=built["int8-dynamic"], backend="ort-cpu")
    p["torch fp32"] = dict(model=built["torch"], precision="fp32")
    if bf16:
        p["torch bf16"] = dict(model=built["torch"], precision="bf16", kernel="sdpa")
        if backbone == "ast":
            p["torch bf16 blocked attention"] = dict(model=built["torch"], precision="bf16", kernel="blocked")
    return p


def score(files: list[Path], model: Path, backend: str = "auto", precision: str | None = None,
          kernel: str | None = None) -> tuple[np.ndarray, list[str], float, str]:
    from mictag import Tagger

    tagger = Tagger(model, backend=backend, precision=precision)
    if kernel:
        from mictag.backbones.attention import set_kernel

        set_kernel(tagger.backend.module, kernel)
    t0 = time.perf_counter()
    by_path = {r.path: r for r in tagger.tag_paths(files, workers=1)}
    seconds = time.perf_counter() - t0
    kept = [str(f) for f in files if by_path[str(f)].status in ("ok", "partial")]
    return np.stack([by_path[k].scores for k in kept]), kept, seconds, tagger.backend.description


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", type=Path, nargs="+", required=True, help="folders of real recordings (musicnn)")
    ap.add_argument("--ast-audio", type=Path, nargs="+", help="folders for the AST (default: --audio)")
    ap.add_argument("--ast-limit", type=int, default=150, help="at most this many files for the AST (it is slow)")
    ap.add_argument("--backbones", nargs="+", default=["musicnn", "ast"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mictag-accuracy-"))
    results = {}
    for backbone in args.backbones:
        files = _files(args.audio if backbone == "musicnn" else (args.ast_audio or args.audio),
                       None if backbone == "musicnn" else args.ast_limit)
        built = build(backbone, work)
        ref, kept, ref_s, _ = score(files, built["fp32"], "ort-cpu", "fp32")
        rows = {"ort-cpu fp32 (reference)": {"seconds": ref_s, "files": len(kept)}}
        for name, kw in paths(backbone, built).items():
            try:
                got, got_kept, seconds, described = score(files, **kw)
            except Exception as exc:  # a path this machine cannot run: say so, go on
                rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            assert got_kept == kept
            diff = np.abs(got - ref)
            changed = np.any((got >= 0.5) != (ref >= 0.5), axis=1)
            rows[name] = {"ran_as": described, "seconds": seconds, "speedup_vs_ort_fp32": ref_s / seconds,
                          "max_abs_dp": float(diff.max()), "mean_abs_dp": float(diff.mean()),
                          "share_of_files_whose_tags_change": float(changed.mean()),
                          "files_whose_tags_change": int(changed.sum())}
            r = rows[name]
            print(f"{backbone:8s} {name:30s} max |dp| {r['max_abs_dp']:.4f}  mean {r['mean_abs_dp']:.5f}  "
                  f"tags changed in {r['files_whose_tags_change']}/{len(kept)} files  {r['speedup_vs_ort_fp32']:.2f}x",
                  flush=True)
        results[backbone] = {"weights": "real (MTT_musicnn)" if backbone == "musicnn" else "random",
                             "files": len(kept), "int8_calibration": built["int8_record"], "rows": rows}
    return save_result("fast_path_accuracy", {"audio": [str(a) for a in args.audio], "results": results}, args.out)


if __name__ == "__main__":
    main()
