"""What trusting a fast path costs and what it keeps: per model, on real recordings, side by side in
one run (same files, same process, one decode worker):

- ``fp32``: the reference (ONNX Runtime's CPU provider, fp32);
- ``unchecked``: auto's fast path run as asked (``--precision``), with no checks;
- ``checked``: auto's default, the same fast path checked against fp32 as it goes
  (:mod:`mictag.runtime.engines.trust`), starting with no verdict for the library.

Per path: seconds, windows/s; against fp32, per window (from the segments) and per file: max
|probability difference| and the windows and files whose tag set differs. For ``checked``: windows
checked, what the checks cost (their share of the fast path's time), windows near a threshold
scored on fp32, whether and why the scan left the fast path, and its overhead over ``unchecked``.

    python benchmarks/trust.py --audio DIR [DIR ...] --model M [--model M2 ...] [--name NAME ...]

Models: exported .onnx files (a calibrated int8 variant beside them is used where this CPU's auto
takes it). Results go to benchmarks/results/trust-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import save_result  # noqa: E402


def _scan(model: Path, entries, library: Path, **kw):
    from mictag.runtime.engines.open import open_backend
    from mictag.runtime.scan.pipeline import Scanner, ScanOptions

    backend = open_backend(model, library=library, **kw)
    scanner = Scanner(backend, ScanOptions(workers=1, segments=True))
    t0 = time.perf_counter()
    results = {r.path: r for r in scanner.scan(entries)}
    return time.perf_counter() - t0, results, scanner


def _windows(results: dict) -> dict[tuple[str, float], np.ndarray]:
    return {(p, s["start"]): np.asarray(s["scores"]) for p, r in results.items() for s in r.segments}


def _compare(got: dict, want: dict, thresholds: np.ndarray) -> dict:
    gw, ww = _windows(got), _windows(want)
    keys = sorted(ww)
    assert set(gw) == set(ww), "the two scans cut other windows"
    dw = np.stack([np.abs(gw[k] - ww[k]) for k in keys]) if keys else np.zeros((0, len(thresholds)))
    flips_w = sum(bool(np.any((gw[k] >= thresholds) != (ww[k] >= thresholds))) for k in keys)
    files = [p for p in want if want[p].scores is not None]
    df = np.stack([np.abs(got[p].scores - want[p].scores) for p in files]) if files else np.zeros((0, 1))
    flips_f = sum(set(got[p].tags) != set(want[p].tags) for p in files)
    return {"windows": len(keys), "max_abs_dp_window": float(dw.max()) if dw.size else 0.0,
            "windows_with_other_tags": int(flips_w), "files": len(files),
            "max_abs_dp_file": float(df.max()) if df.size else 0.0, "files_with_other_tags": int(flips_f)}


def bench(model: Path, audio: list[Path], work: Path) -> dict:
    from mictag.metadata import read_metadata
    from mictag.runtime.engines.open import plan_engine
    from mictag.runtime.scan.discovery import discover

    library = audio[0]
    entries = [e for d in audio for e in discover(d, (), ())]
    os.environ["MICTAG_HOME"] = str(work / f"home-{model.stem}")  # no verdicts yet: a first scan
    plan = plan_engine(model, library=library)
    row: dict = {"model": model.name, "files": len(entries), "auto": plan.describe(), "checked_path": plan.check}
    seconds, ref, _ = _scan(model, entries, library, backend="ort-cpu", precision="fp32")
    thresholds = np.asarray(read_metadata(model)["thresholds"])
    row["fp32"] = {"seconds": seconds, "windows": sum(len(r.segments) for r in ref.values())}
    row["fp32"]["windows_per_s"] = row["fp32"]["windows"] / seconds
    if not plan.check:
        return row
    fast = {"backend": plan.backend, "precision": plan.precision}
    seconds, results, _ = _scan(model, entries, library, **fast)
    row["unchecked"] = {"seconds": seconds, **_compare(results, ref, thresholds)}
    seconds, results, scanner = _scan(model, entries, library)
    s = scanner.backend.stats
    row["checked"] = {"seconds": seconds, **_compare(results, ref, thresholds), "fast_windows": s.fast_windows,
                      "windows_checked": s.checked, "check_cost": s.check_cost, "every": scanner.backend.every,
                      "borderline_windows": s.borderline, "borderline_share": s.borderline / max(1, s.fast_windows),
                      "borderline_seconds": s.borderline_seconds, "check_seconds": s.check_seconds,
                      "fast_seconds": s.fast_seconds, "left_fast_path": s.switched, "files_redone": scanner.redone,
                      "overhead_vs_unchecked": seconds / row["unchecked"]["seconds"] - 1,
                      "speedup_vs_fp32": row["fp32"]["seconds"] / seconds, "notes": scanner.notes}
    # a later scan of the same library: it starts from what the first one found (its verdict)
    later = plan_engine(model, library=library)
    seconds, results, scanner = _scan(model, entries, library)
    s = getattr(scanner.backend, "stats", None)
    row["later"] = {"auto": later.describe(), "checked_path": later.check, "seconds": seconds,
                    **_compare(results, ref, thresholds), "speedup_vs_fp32": row["fp32"]["seconds"] / seconds,
                    "windows_checked": s.checked if s else 0, "borderline_share": s.borderline / max(1, s.fast_windows)
                    if s else 0.0, "left_fast_path": s.switched if s else "", "notes": scanner.notes}
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", type=Path, nargs="+", required=True)
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--name", action="append", help="a name for each --model, in the results")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mictag-trust-"))
    rows = []
    for i, model in enumerate(args.model):
        row = bench(model, args.audio, work)
        row["name"] = args.name[i] if args.name and i < len(args.name) else model.stem
        rows.append(row)
        c = row.get("checked")
        line = f"{row['name']}: auto {row['auto']}; fp32 {row['fp32']['seconds']:.1f} s"
        if c:
            u = row["unchecked"]
            line += (f"; unchecked {u['seconds']:.1f} s (max |dp| {u['max_abs_dp_window']:.3f}, "
                     f"{u['windows_with_other_tags']}/{u['windows']} windows and {u['files_with_other_tags']}/"
                     f"{u['files']} files with other tags); checked {c['seconds']:.1f} s (max |dp| "
                     f"{c['max_abs_dp_window']:.3f}, {c['windows_with_other_tags']} windows and "
                     f"{c['files_with_other_tags']} files with other tags; {c['windows_checked']} checked, checks "
                     f"{100 * c['check_cost']:.1f}%, borderline {100 * c['borderline_share']:.1f}%"
                     f"{'; left: ' + c['left_fast_path'] if c['left_fast_path'] else ''})")
            later = row["later"]
            line += (f"; later scan: {later['auto']}, {later['seconds']:.1f} s, max |dp| {later['max_abs_dp_window']:.3f}, "
                     f"{later['windows_with_other_tags']} windows with other tags")
        print(line, flush=True)
    return save_result("trust", {"audio": [a.name for a in args.audio], "rows": rows}, args.out)


if __name__ == "__main__":
    main()
