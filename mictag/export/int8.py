"""Static int8: a calibrated QDQ ONNX graph for CPUs with int8 dot products but no native bf16.

Only the matrix products with weights (the AST's Linear layers and patch embedding, musicnn's
convolutions and dense layers) are quantised: int8 weights per output channel (symmetric), uint8
inputs with scales fixed by calibration (ONNX Runtime's int8 GEMM reaches VNNI/AMX for uint8 x
int8); their outputs stay fp32. The front end (its log spans a range int8 cannot hold),
LayerNorm, Softmax, GELU, the residual stream and the attention products between activations
stay fp32.

Calibration windows come from audio files the user gives (``--calibrate DIR``: decoded by the
runtime's decoder, as a scan would see them) or, without them, from a fixed set of synthetic
signals (harmonic tones with envelopes, noise, clicks, chirps, silence); the deviation from fp32 is
then measured on other windows than those calibrated on and recorded in the metadata (``int8``),
where ``auto`` reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mictag import frontends
from mictag.frontends import frontend_from_dict

FRONT_END_PREFIXES = ("/fbank/", "/finish/")
QUANTISED_OPS = ("MatMul", "Gemm", "Conv")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aiff", ".aif")


def synthetic_signals(sample_rate: int, seconds: float, count: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic signals that span what music puts into a front end: tones with harmonics and
    attack-decay envelopes, filtered noise, click trains, chirps, mixtures and near-silence."""
    rng = np.random.default_rng(seed)
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    out = []
    for i in range(count):
        kind = i % 6
        if kind == 0:  # a harmonic note with an envelope
            f0 = 55.0 * 2 ** rng.uniform(0, 5)
            amps = rng.uniform(0, 1, 8) / np.arange(1, 9)
            x = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t) for k, a in enumerate(amps))
            x *= np.exp(-t * rng.uniform(0.2, 3.0)) * (1 - np.exp(-t * 200))
        elif kind == 1:  # low-passed noise
            x = np.cumsum(rng.standard_normal(n)) * 0.02
            x -= np.convolve(x, np.ones(64) / 64, mode="same")
        elif kind == 2:  # click train (percussion-like)
            x = np.zeros(n)
            step = int(sample_rate * rng.uniform(0.1, 0.5))
            for start in range(0, n, step):
                burst = rng.standard_normal(min(800, n - start)) * np.exp(-np.arange(min(800, n - start)) / 120)
                x[start : start + burst.size] += burst
        elif kind == 3:  # chirp
            f = np.geomspace(60, sample_rate / 2.5, n)
            x = np.sin(2 * np.pi * np.cumsum(f) / sample_rate)
        elif kind == 4:  # chord plus noise
            x = sum(np.sin(2 * np.pi * 220 * r * t) for r in (1, 1.26, 1.5)) + 0.1 * rng.standard_normal(n)
        else:  # near-silence
            x = 1e-4 * rng.standard_normal(n)
        peak = np.abs(x).max() or 1.0
        out.append((x / peak * rng.uniform(0.05, 0.9)).astype(np.float32))
    return out


def _audio_signals(directory: Path, limit: int, seconds: float, sample_rate: int) -> list[np.ndarray]:
    from mictag.audio import AudioError, load

    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    signals = []
    for path in files:
        try:
            x = load(path)
        except AudioError:
            continue  # calibration takes what decodes; the rest is not its business
        if x.size:
            signals.append(x[: int(seconds * sample_rate) * 4])
        if len(signals) >= limit:
            break
    if not signals:
        from mictag.errors import MictagError

        raise MictagError(f"no decodable audio under {directory} to calibrate int8 with")
    return signals


def calibration_windows(meta: dict, audio_dir: str | os.PathLike | None = None, count: int = 16,
                        seed: int = 0) -> tuple[list[dict], str]:
    """(model feeds of one window each, where they came from) for a model described by ``meta``."""
    cfg = frontend_from_dict(meta["features"])
    if audio_dir is not None:
        signals = _audio_signals(Path(audio_dir), count, cfg.window_seconds, cfg.sample_rate)
        source = f"{len(signals)} audio files from {audio_dir}"
    else:
        signals = synthetic_signals(cfg.sample_rate, cfg.window_seconds, count, seed)
        source = f"{count} synthetic signals"
    feeds = []
    for x in signals:
        if meta.get("variant", "waveform") == "waveform":
            n = cfg.window_samples
            w = np.zeros(n, np.float32)
            w[: min(n, x.size)] = x[:n]
            feeds.append({"windows": w[None], "valid_samples": np.array([min(n, x.size)], np.int64)})
        else:
            frames, valid = frontends.pad_frames(frontends.log_mel(frontends.edge_padded(x, cfg), cfg), cfg)
            feeds.append({"frames": frames[None].astype(np.float32), "valid_frames": np.array([valid], np.int64)})
    return feeds, source


def quantisable_nodes(model) -> list[str]:
    """Names of the weight-bearing matrix products outside the front end."""
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type in QUANTISED_OPS and len(n.input) > 1 and n.input[1] in weights
            and not n.name.startswith(FRONT_END_PREFIXES)]


def quantize_static_int8(src: Path, dst: Path, feeds: list[dict]) -> None:
    """Write the static QDQ int8 graph of the fp32 graph ``src`` to ``dst``, calibrated on ``feeds``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    nodes = quantisable_nodes(onnx.load(str(src), load_external_data=False))
    import logging

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its "run pre-processing" hint
    with np.errstate(invalid="ignore", divide="ignore"):  # all-zero calibration ranges get scale 1 below
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_quantize=nodes, op_types_to_quantize=list(QUANTISED_OPS),
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                       # products stay fp32 on their way out: the bias Add, the
                                       # residual stream and everything after see no requantisation
                                       "OpTypesToExcludeOutputQuantization": list(QUANTISED_OPS)})


def deviation(fp32: Path, int8: Path, feeds: list[dict], thresholds) -> dict:
    """How far the int8 graph's probabilities are from fp32 on ``feeds``: the max and mean
    |difference| and the share of windows whose tag set (at the model's thresholds) changes."""
    import onnxruntime as ort

    runs = []
    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs.append(np.concatenate([session.run(["probabilities"], f)[0] for f in feeds]))
    a, b = runs
    t = np.asarray(thresholds, np.float32)
    return {"max_abs_dp": float(np.abs(a - b).max()), "mean_abs_dp": float(np.abs(a - b).mean()),
            "tag_changes": float(np.mean(np.any((a >= t) != (b >= t), axis=1))), "windows": len(feeds)}
