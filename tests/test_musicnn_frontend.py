"""musicnn's front end: librosa parity (the independent reference), the original float16 pipeline,
streaming with centred frames, and numpy vs torch."""

from __future__ import annotations

import numpy as np
import pytest

from mictag import frontends
from mictag.frontends import MUSICNN_MEL, slaney_hz_to_mel, slaney_mel_to_hz

librosa = pytest.importorskip("librosa")

RATE = 16000


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    t = np.arange(int(4.3 * RATE)) / RATE
    return {
        "noise": 0.1 * rng.standard_normal(t.size),
        "chirp": 0.05 * np.sin(2 * np.pi * (60 + 900 * t) * t),
        "tones": 0.02 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 3100 * t)),
        "silence": np.zeros(t.size),
        "quiet": 1e-4 * rng.standard_normal(t.size),
        "one_frame": 0.1 * rng.standard_normal(300),
        "exact_hop": 0.1 * rng.standard_normal(256 * 40),
    }


def _librosa_mel(y: np.ndarray) -> np.ndarray:
    """musicnn's call (librosa 0.7 defaults: centred, reflect padding), as float64 power."""
    return librosa.feature.melspectrogram(y=y.astype(np.float32), sr=RATE, n_fft=512, hop_length=256, n_mels=96,
                                          center=True, pad_mode="reflect").T.astype(np.float64)


def test_mel_matrix_equals_librosa():
    ref = librosa.filters.mel(sr=RATE, n_fft=512, n_mels=96)  # Slaney scale and area norm by default
    np.testing.assert_allclose(MUSICNN_MEL.mel_matrix.T, ref, rtol=1e-5, atol=1e-9)
    f = np.array([0.0, 500.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0])
    np.testing.assert_allclose(slaney_hz_to_mel(f), librosa.hz_to_mel(f), rtol=1e-12)
    np.testing.assert_allclose(slaney_mel_to_hz(slaney_hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name", list(_signals()))
def test_log_mel_equals_librosa(name):
    y = _signals()[name].astype(np.float32)
    ours = frontends.log_mel(frontends.edge_padded(y, MUSICNN_MEL), MUSICNN_MEL)
    ref = np.log10(10000.0 * _librosa_mel(y) + 1.0)
    assert ours.shape == ref.shape == (1 + y.size // 256, 96)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4)


def test_within_one_float16_step_of_the_original_pipeline():
    """musicnn cast the mel to float16 and took the log in float16: where that is finite, we are
    within one float16 step of it (plus the float16 rounding of the mel and of 10000 mel, and its
    flush of tiny energies to zero: 5e-4 in all); a loud tone overflows it to infinity, and not us."""
    for name, y in _signals().items():
        mel = _librosa_mel(y).astype(np.float32).astype(np.float16)
        original = np.log10(10000 * mel + 1)  # float16 arithmetic, as in musicnn's extractor
        ours = frontends.log_mel(frontends.edge_padded(y.astype(np.float32), MUSICNN_MEL), MUSICNN_MEL)
        step = np.spacing(np.abs(original)).astype(np.float64)
        assert np.all(np.abs(ours - original.astype(np.float64)) <= step + 5e-4), name
    loud = (0.9 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(np.log10(10000 * _librosa_mel(loud).astype(np.float16) + 1)).any()
    assert np.isfinite(frontends.log_mel(frontends.edge_padded(loud, MUSICNN_MEL), MUSICNN_MEL)).all()


@pytest.mark.parametrize("chunk", [1, 100, 256, 257, 1000, 48128, 100000])
def test_streaming_equals_one_shot(chunk):
    y = _signals()["chirp"].astype(np.float32)[: 3 * RATE + 77]
    one_shot = frontends.log_mel(frontends.edge_padded(y, MUSICNN_MEL), MUSICNN_MEL)
    stream = frontends.FbankStream(MUSICNN_MEL)
    parts = [stream.push(y[i : i + chunk]) for i in range(0, y.size, chunk)] + [stream.finish()]
    streamed = np.concatenate(parts)
    assert streamed.shape == one_shot.shape and stream.frames_emitted == one_shot.shape[0]
    np.testing.assert_allclose(streamed, one_shot, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", [0, 1, 100, 256, 257, 511, 512])
def test_short_inputs_frame_count(n):
    """1 + n // 256 centred frames (none for no samples); inputs too short to reflect are zero-padded."""
    y = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    stream = frontends.FbankStream(MUSICNN_MEL)
    frames = np.concatenate([stream.push(y), stream.finish()])
    assert frames.shape == ((1 + n // 256) if n else 0, 96)
    if n > 256:
        np.testing.assert_allclose(frames, np.log10(10000.0 * _librosa_mel(y) + 1.0), atol=2e-4)


def test_torch_module_equals_numpy():
    torch = pytest.importorskip("torch")
    from mictag.model.fbank import Fbank

    module = Fbank(MUSICNN_MEL, normalize=False)
    for name, y in _signals().items():
        padded = frontends.edge_padded(y.astype(np.float32), MUSICNN_MEL)
        ours = frontends.log_mel(padded, MUSICNN_MEL)
        with torch.no_grad():
            got = module.log_mel(torch.from_numpy(padded)[None])[0].numpy()
        diff = np.abs(got - ours)
        assert diff.max() <= 1e-3 and np.median(diff) <= 1e-5, name


def test_window_rule_and_model_input():
    """Windows of 187 centred frames every 187: a window's frames are the file's frames, the last
    is zero-padded (silence in log10(10000 mel + 1)), and window times map back to the file."""
    from mictag.runtime.scan.windows import frame_windows, sample_windows

    y = _signals()["noise"].astype(np.float32)[: 7 * RATE]
    frames = frontends.log_mel(frontends.edge_padded(y, MUSICNN_MEL), MUSICNN_MEL)
    chunks = [y[i : i + 5000] for i in range(0, y.size, 5000)]
    fw = list(frame_windows(iter(chunks), MUSICNN_MEL, 187))
    sw = list(sample_windows(iter(chunks), MUSICNN_MEL, 187))
    assert [w.start_frame for w in fw] == [w.start_frame for w in sw] == frontends.window_starts(frames.shape[0], 187, 187)
    for f, s in zip(fw, sw):
        np.testing.assert_allclose(f.data[: f.valid], frames[f.start_frame : f.start_frame + f.valid], atol=1e-4)
        assert not f.data[f.valid :].any()
        direct = frontends.log_mel(s.data[: s.valid], MUSICNN_MEL)
        assert direct.shape[0] == f.valid
        np.testing.assert_allclose(direct, f.data[: f.valid], atol=1e-4)
    spans = [w.seconds(MUSICNN_MEL) for w in fw]
    assert spans == [w.seconds(MUSICNN_MEL) for w in sw] and spans[0][0] == 0.0
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(spans, spans[1:]))  # windows tile the file
    assert 0 <= spans[-1][1] - y.size / RATE < 256 / RATE
    whole = frontends.model_input(y[: 3 * RATE], MUSICNN_MEL)
    np.testing.assert_allclose(whole, frames[:187], atol=1e-4)  # no external normalisation
