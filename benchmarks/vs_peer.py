"""mictag against the tool a user would pick instead: transformers' audio-classification pipeline
(fp32, arrays in) with the same AST, on the same clips, in one run, start-up included.

    python benchmarks/vs_peer.py                      # 48 ten-second clips, the full-size AST
    python benchmarks/vs_peer.py --tiny --clips 4     # smoke run (what CI runs)

Both sides run as fresh processes and are timed from spawn to exit:
- mictag: `mictag scan LIB --out tags.csv` with default options (auto engine and precision, the
  default workers), the zero-training tagger already built (what `mictag models pull` does; its
  one-time build is reported apart). Run twice: the first start compiles for the engine (OpenVINO
  caches it), the second is every later scan. It decodes the files itself.
- the peer: `pipeline("audio-classification", model=DIR)` in fp32 on 16-kHz mono arrays that
  were decoded beforehand (decoding is not charged to it).
The AST is one Hugging Face directory with random weights (no weights can be downloaded here), its
classifier set so that scores fall as a trained model's do, mostly near 0 (``--random-head`` keeps
the raw random head, every score near 0.5: the worst case for a fast path, since every window then
sits near a threshold and is scored on fp32 too). Scores: the default scan against an fp32 scan of the same model
(`--precision fp32 --backend ort-cpu`): max |difference| and the share of files whose tag set
changes. Results go to benchmarks/results/vs-peer-<time>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import save_result  # noqa: E402
from scan import make_library  # noqa: E402

PEER = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import torch
from transformers import pipeline
arrays = np.load(sys.argv[2])
pipe = pipeline("audio-classification", model=sys.argv[1], device="cpu", torch_dtype=torch.float32)
loaded = time.perf_counter()
out = [pipe({"raw": arrays[k], "sampling_rate": 16000}) for k in arrays.files]
done = time.perf_counter()
print(json.dumps({"startup_s": loaded - t0, "inference_s": done - loaded, "clips": len(out),
                  "threads": torch.get_num_threads()}))
"""


def write_hf_ast(path: Path, tiny: bool, realistic_head: bool = True) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    kwargs = dict(num_labels=527, layer_norm_eps=1e-6)
    if tiny:
        kwargs.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = transformers.ASTForAudioClassification(transformers.ASTConfig(**kwargs))
    if realistic_head:
        # A random head puts every AudioSet score near 0.5 (logits ~ N(0, 0.55)), where no trained model
        # sits and where every window is "near a threshold". A trained AST's scores are mostly near 0:
        # logits ~ N(-6, 2.3) give each class a score above 0.5 on 0.5% of windows, AudioSet's label
        # density (about 2.7 labels per clip of 527). The classifier reads LayerNorm'd features (unit
        # variance), so a weight std of 2.3 / sqrt(hidden) gives that spread.
        dense = model.classifier.dense
        with torch.no_grad():
            dense.weight.normal_(0.0, 2.3 / model.config.hidden_size ** 0.5)
            dense.bias.fill_(-6.0)
    model.save_pretrained(path)
    transformers.ASTFeatureExtractor().save_pretrained(path)
    return path


def _timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {done.stderr[-2000:]}")
    return seconds, done


def _scores(path: Path) -> dict[str, np.ndarray]:
    from mictag.labels import OPENMIC_LABELS

    with path.open(newline="", encoding="utf-8") as f:
        return {r["path"]: np.array([float(r[l]) for l in OPENMIC_LABELS]) for r in csv.DictReader(f)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--tiny", action="store_true", help="tiny AST (smoke test)")
    ap.add_argument("--random-head", action="store_true", help="keep the random classifier (scores near 0.5)")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="mictag-vs-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    hf = write_hf_ast(work / "ast", args.tiny, realistic_head=not args.random_head)
    lib = make_library(work / "lib", clips=args.clips, tracks=0)
    env = {**os.environ, "MICTAG_HOME": str(work / "home")}
    os.environ["MICTAG_HOME"] = env["MICTAG_HOME"]

    from mictag.audio import load
    from mictag.runtime.engines.open import plan_engine
    from mictag.catalog import build_default_tagger

    t0 = time.perf_counter()
    tagger = build_default_tagger(hf)
    build_s = time.perf_counter() - t0
    plan = plan_engine(tagger)
    print(f"tagger built in {build_s:.1f} s; auto here: {plan.describe()}", flush=True)

    files = sorted(p for p in lib.rglob("*") if p.is_file())
    np.savez(work / "arrays.npz", **{f"c{i}": load(p) for i, p in enumerate(files)})
    seconds_audio = sum(len(a) for a in np.load(work / "arrays.npz").values()) / 16000

    mictag = [sys.executable, "-m", "mictag", "scan", str(lib), "--quiet"]
    runs = {}
    for name in ("first", "second"):
        out = work / f"tags-{name}.csv"
        runs[name], _ = _timed([*mictag, "--out", str(out), "--overwrite"], env)
        print(f"mictag scan ({name} start): {runs[name]:.1f} s", flush=True)
    (work / "peer.py").write_text(PEER)
    peer_s, done = _timed([sys.executable, str(work / "peer.py"), str(hf), str(work / "arrays.npz")], env)
    peer = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"transformers pipeline: {peer_s:.1f} s ({peer['startup_s']:.1f} s start-up)", flush=True)
    from mictag.cpu import cpu_info

    if plan.precision != "bf16" and cpu_info().bf16:  # the bf16 path beside auto's, for comparison
        runs["bf16"], _ = _timed([*mictag, "--out", str(work / "tags-bf16.csv"), "--precision", "bf16",
                                  "--overwrite"], env)
        print(f"mictag scan --precision bf16: {runs['bf16']:.1f} s", flush=True)
    ref_s, _ = _timed([*mictag, "--out", str(work / "tags-fp32.csv"), "--precision", "fp32", "--backend", "ort-cpu"], env)

    exact = _scores(work / "tags-fp32.csv")
    deviation = {}
    for name in runs:
        fast = _scores(work / f"tags-{name}.csv")
        assert fast.keys() == exact.keys() and len(fast) == len(files)
        diff = np.stack([np.abs(fast[p] - exact[p]) for p in fast])
        deviation[name] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                           "share_of_files_whose_tags_change": float(np.mean(
                               [np.any((fast[p] >= 0.5) != (exact[p] >= 0.5)) for p in fast]))}
    diff_max = deviation["second"]["max_abs"]
    tags_changed = deviation["second"]["share_of_files_whose_tags_change"]
    ratio = {k: peer_s / v for k, v in runs.items()}
    print("mictag / peer speed: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()) +
          f"; max |score - fp32| {diff_max:.4f}; tag sets changed in {100 * tags_changed:.1f}% of files", flush=True)
    return save_result("vs_peer" + ("-tiny" if args.tiny else ""), {
        "clips": len(files), "audio_seconds": seconds_audio, "model": "tiny AST" if args.tiny else "AudioSet AST (random weights)",
        "auto": plan.describe(), "tagger_build_seconds": build_s,
        "mictag_scan_seconds": runs, "fp32_scan_seconds": ref_s, "peer_seconds": peer_s, "peer": peer,
        "speed_vs_peer": ratio, "x_realtime": {k: seconds_audio / v for k, v in runs.items()},
        "peer_x_realtime": seconds_audio / peer_s, "deviation_vs_fp32": deviation,
        "max_abs_score_dev_vs_fp32": diff_max, "share_of_files_whose_tags_change": tags_changed}, args.out)


if __name__ == "__main__":
    main()
