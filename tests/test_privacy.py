"""Nothing phones home (mictag.privacy): the real commands, each in a subprocess with a fresh HOME,
leave no telemetry store and no device id behind (ONNX Runtime's 1DS store under
~/.cache/Microsoft, OpenVINO's client id under ~/intel, ...); a scan attempts no network connection
(connect() traced with strace where it runs), and runs with the network namespace cut."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from library import signal as tone

# What telemetry leaves in a home folder: ONNX Runtime's 1DS store and device id, OpenVINO's client
# id, and the like (matched against every path under the fresh HOME, case-insensitively).
TRACES = ("microsoft", "deviceid", "telemetry", "intel", ".onnxruntime", "usage_stats")


@pytest.fixture(scope="module")
def setup(tiny_tagger, tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy")
    model = tiny_tagger
    lib = root / "lib"
    lib.mkdir()
    for i in range(3):
        sf.write(lib / f"t{i}.flac", tone(2.0, 16000, 1, seed=i)[:, 0], 16000)
    return root, model, lib


def _fresh_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "RAY_USAGE", "HF_HUB_DISABLE"))}
    env.update(HOME=str(home), MICTAG_HOME=str(home / ".cache" / "mictag"), HF_HOME=str(home / "hf"),
               HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(home / ".cache"))
    return env


def _traces(home: Path) -> list[str]:
    return [str(p.relative_to(home)) for p in home.rglob("*")
            if any(t in str(p.relative_to(home)).lower() for t in TRACES)]


def _commands(root: Path, model: Path, lib: Path, tiny_ast_dir: Path) -> dict[str, list[str]]:
    from musicnn_fixtures import fake_musicnn_tf, fake_musicnn_wheel

    out = root / "out"
    (root / "wheel").mkdir(exist_ok=True)
    wheel = root / "wheel" / "musicnn-0.1.0-py3-none-any.whl"
    if not wheel.exists():
        fake_musicnn_wheel(wheel, lambda i: fake_musicnn_tf(seed=i))
    return {
        # the first command of this session that wrote ~/.cache/Microsoft (it calibrates int8 with ONNX Runtime)
        "models pull musicnn": ["models", "pull", "musicnn", "--wheel", str(wheel), "--int8"],
        "info": ["info", "--model", str(model)],
        "models list": ["models", "list"],
        "scan (ONNX Runtime)": ["scan", str(lib), "--out", str(out / "a.csv"), "--model", str(model), "--backend",
                                "ort-cpu", "--workers", "1"],
        "scan (auto: OpenVINO or ONNX Runtime, checked)": ["scan", str(lib), "--out", str(out / "b.csv"), "--model",
                                                           str(model), "--workers", "1", "--segments",
                                                           str(out / "seg.jsonl")],
        "report": ["report", str(out / "b.csv"), "--segments", str(out / "seg.jsonl"), "--out", str(out / "r.html")],
        "write-tags": ["write-tags", str(out / "b.csv"), "--library", str(lib), "--dry-run"],
        "export (int8, calibrated with ONNX Runtime)": ["export", "--ast", str(tiny_ast_dir), "--fbank-out",
                                                        str(out / "g.onnx"), "--precision", "int8"],
    }


def test_no_command_leaves_a_telemetry_store_or_a_device_id(setup, tiny_ast_dir, tmp_path):
    root, model, lib = setup
    (root / "out").mkdir(exist_ok=True)
    home = tmp_path / "home"
    home.mkdir()
    env = _fresh_env(home)
    for name, args in _commands(root, model, lib, tiny_ast_dir).items():
        done = subprocess.run([sys.executable, "-m", "mictag", *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode in (0, 1), (name, done.stderr)
        assert _traces(home) == [], f"{name} left {_traces(home)}"
    beets = subprocess.run([sys.executable, "-c", "import beetsplug.mictag, mictag.runtime.engines.open"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert beets.returncode == 0, beets.stderr
    assert _traces(home) == []


def test_the_opt_outs_are_set_before_the_libraries_load_and_a_user_may_opt_in(tmp_path):
    code = ("import os, json\nimport mictag\nimport onnxruntime\n"
            "print(json.dumps({k: os.environ.get(k) for k in mictag.privacy.OPT_OUTS}))\n")
    env = _fresh_env(tmp_path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(done.stdout) == {"ORT_DISABLE_TELEMETRY": "1", "RAY_USAGE_STATS_ENABLED": "0",
                                       "HF_HUB_DISABLE_TELEMETRY": "1"}
    env["ORT_DISABLE_TELEMETRY"] = "0"  # the user's own choice is left as it is
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(done.stdout)["ORT_DISABLE_TELEMETRY"] == "0"


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_scan_attempts_no_network_connection(setup, tmp_path):
    root, model, lib = setup
    log = tmp_path / "connect.log"
    env = _fresh_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    done = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(log), sys.executable, "-m", "mictag",
                           "scan", str(lib), "--out", str(tmp_path / "t.csv"), "--model", str(model), "--workers", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    if "ptrace" in done.stderr and done.returncode:
        pytest.skip("ptrace is not allowed here")
    assert done.returncode == 0, done.stderr
    network = [l for l in log.read_text().splitlines() if "connect(" in l and ("AF_INET" in l or "AF_INET6" in l)]
    assert network == [], network


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is not installed")
def test_a_scan_runs_with_the_network_cut(setup, tmp_path):
    root, model, lib = setup
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode:
        pytest.skip("network namespaces are not allowed here")
    (tmp_path / "home").mkdir()
    done = subprocess.run(["unshare", "-rn", sys.executable, "-m", "mictag", "scan", str(lib), "--out",
                           str(tmp_path / "t.csv"), "--model", str(model), "--workers", "1"],
                          capture_output=True, text=True, env=_fresh_env(tmp_path / "home"), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3 files (3 ok" in done.stderr


def test_a_ray_scan_has_ray_usage_statistics_off_and_leaves_no_trace(setup, tmp_path):
    pytest.importorskip("ray")
    root, model, lib = setup
    home = tmp_path / "home"
    home.mkdir()
    code = (f"from mictag.cli import main\nimport sys\n"
            f"try:\n    main(['scan', {str(lib)!r}, '--out', {str(tmp_path / 't.csv')!r}, '--model', {str(model)!r}, "
            f"'--ray', '-q'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            f"from ray._common.usage import usage_lib\nprint('usage stats', usage_lib.usage_stats_enabled())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_fresh_env(home),
                          timeout=300)
    assert "exit 0" in done.stdout and "usage stats False" in done.stdout, done.stdout + done.stderr
    assert _traces(home) == []


def test_onnxruntime_imported_before_mictag_is_warned_about(tmp_path):
    code = "import warnings\nwarnings.simplefilter('always')\nimport onnxruntime\nimport mictag\n"
    env = _fresh_env(tmp_path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "imported before mictag, with its telemetry on" in done.stderr, done.stderr
    env["ORT_DISABLE_TELEMETRY"] = "1"  # already off: nothing to say
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "telemetry" not in done.stderr, done.stderr
