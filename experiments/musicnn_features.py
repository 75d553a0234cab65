"""Per-window features of musicnn's four frozen networks (MTT/MSD x musicnn/vgg) for a labelled
folder, cut exactly as the scan cuts windows (the runtime's decode, musicnn mel front end and
window rule: 3-s windows, no overlap, the last one partial and padded), for the v2 tagger study:

    python experiments/musicnn_features.py --data CORPUS --name corpus --out FEATS [--labels labels-full.csv]

Writes FEATS/<name>/<network>.npz per network (resumable: a finished network is skipped) holding,
per window, ``pen`` (the layer the mappers read: musicnn's 200-d dense layer, vgg's 256 pooled
features), ``logits`` (the 50 tags) and, for musicnn, ``pool`` (the 1,506 max/mean-pooled mid-end
features before the dense layer); and FEATS/<name>/index.npz: each window's file, each file's
path, split and label row (nan where unknown). fp32 throughout, as the scan's reference path.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mictag import audio
from mictag.backbones.frozen import frontend_for, load_backbone
from mictag.backbones.musicnn import MusicnnConfig
from mictag.labels import OPENMIC_LABELS
from mictag.model.fbank import FrameFinish
from mictag.runtime.scan.windows import frame_windows

NETWORKS = ("MTT_musicnn", "MSD_musicnn", "MTT_vgg", "MSD_vgg")


def read_labels(csv_path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(files, splits, (files, 20) labels in OpenMIC order, nan where the CSV has no column or a
    blank cell). A folder whose CSV names fewer classes (single-instrument recordings) marks the
    others 0: each of its clips plays its one class only."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    single = len([c for c in rows[0] if c in OPENMIC_LABELS]) < len(OPENMIC_LABELS)
    files, splits, y = [], [], np.full((len(rows), len(OPENMIC_LABELS)), np.nan, np.float32)
    for i, row in enumerate(rows):
        files.append(row["file"])
        splits.append(row.get("split", ""))
        for j, label in enumerate(OPENMIC_LABELS):
            cell = (row.get(label) or "").strip()
            if cell:
                y[i, j] = float(cell)
            elif single:
                y[i, j] = 0.0
    return files, splits, y


def windows_of(path: Path, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(W, frames, mels) raw log-mel windows and their valid counts, as the scan cuts them."""
    got = list(frame_windows(audio.stream(path), cfg, cfg.target_frames))
    return np.stack([w.data for w in got]), np.array([w.valid for w in got], np.int64)


class Outputs(torch.nn.Module):
    """Front-end finish + one network, returning every feature the study reads."""

    def __init__(self, finish: FrameFinish, model: torch.nn.Module):
        super().__init__()
        self.finish, self.model = finish, model
        self.captured = {}
        if hasattr(model, "bn_pool"):
            model.bn_pool.register_forward_hook(lambda m, inp, o: self.captured.__setitem__("pool", inp[0]))

    def forward(self, frames: torch.Tensor, valid: torch.Tensor):
        pen = self.model.forward_features(self.finish(frames, valid))
        out = (pen, self.model.forward_head(pen))
        return out + ((self.captured["pool"],) if "pool" in self.captured else ())


def compiled_network(net: str, finish: FrameFinish, out: Path):
    """The network with its feature outputs, exported to ONNX and compiled by OpenVINO in fp32 (the
    scan's reference precision; torch's CPU convolutions are 5x slower here)."""
    from mictag.runtime.engines.openvino import compile_model

    wrapper = Outputs(finish, load_backbone("musicnn", net).eval())
    names = ["pen", "logits"] + (["pool"] if hasattr(wrapper.model, "bn_pool") else [])
    path = out / f"{net}.onnx"
    example = (torch.zeros(2, 187, 96), torch.full((2,), 187, dtype=torch.int64))
    torch.onnx.export(wrapper, example, str(path), input_names=["frames", "valid"], output_names=names,
                      dynamic_axes={"frames": {0: "b"}, "valid": {0: "b"}, **{n: {0: "b"} for n in names}},
                      opset_version=17, dynamo=False)
    return compile_model(path, "fp32", cache=False)[0], names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--labels", default=None, help="CSV in --data (default: labels-full.csv, else labels.csv)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    csv_name = args.labels or ("labels-full.csv" if (args.data / "labels-full.csv").is_file() else "labels.csv")
    files, splits, y = read_labels(args.data / csv_name)
    out = args.out / args.name
    out.mkdir(parents=True, exist_ok=True)
    cfg = frontend_for("musicnn", MusicnnConfig())
    finish = FrameFinish(cfg, normalize=True)
    index_file = out / "index.npz"
    if index_file.is_file():
        index = np.load(index_file)
        window_file, frames_all, valid_all = index["window_file"], None, None
    else:
        t0 = time.perf_counter()
        chunks, valids, owner = [], [], []
        for i, rel in enumerate(files):
            frames, valid = windows_of(args.data / rel, cfg)
            chunks.append(frames)
            valids.append(valid)
            owner += [i] * len(valid)
        frames_all, valid_all = np.concatenate(chunks), np.concatenate(valids)
        window_file = np.asarray(owner, np.int64)
        np.save(out / "frames.npy", frames_all.astype(np.float16))
        np.savez(index_file, window_file=window_file, valid=valid_all, files=np.array(files),
                 splits=np.array(splits), y=y)
        print(f"{args.name}: {len(files)} files, {len(window_file)} windows in {time.perf_counter() - t0:.0f} s",
              flush=True)
    for net in args.networks:
        target = out / f"{net}.npz"
        if target.is_file():
            continue
        if frames_all is None:
            frames_all = np.load(out / "frames.npy").astype(np.float32)
            valid_all = np.load(index_file)["valid"]
        compiled, names = compiled_network(net, finish, out)
        feats = {name: [] for name in names}
        t0 = time.perf_counter()
        for s in range(0, len(window_file), 64):
            result = compiled({"frames": frames_all[s:s + 64], "valid": valid_all[s:s + 64]})
            for k, name in enumerate(names):
                feats[name].append(result[compiled.output(k)])
        seconds = time.perf_counter() - t0
        np.savez(target, **{k: np.concatenate(v).astype(np.float32) for k, v in feats.items()})
        print(f"{args.name} {net}: {len(window_file)} windows in {seconds:.0f} s "
              f"({len(window_file) / seconds:.1f} windows/s, openvino fp32)", flush=True)
    (out / "done.json").write_text(json.dumps({"networks": sorted(p.stem for p in out.glob("*_*.npz"))}))


if __name__ == "__main__":
    sys.exit(main())
