"""The command line as a user meets it, and the lean-import promise."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from mictag.cli import main


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_and_help_do_not_import_torch():
    out = _python(
        "import sys\n"
        "import mictag, mictag.cli, mictag.frontends, mictag.labels\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(mictag.cli.main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'transformers')))\n"
    )
    assert out.strip() == "[]"


def test_python_dash_m_and_console_script_show_help():
    done = subprocess.run([sys.executable, "-m", "mictag", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "info" in done.stdout and "params" in done.stdout


def test_info_lists_backends_and_model_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "models"))
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and "torch" in result.output and "tensorrt" in result.output
    assert str(tmp_path / "models") in result.output


def test_params_prints_table1():
    pytest.importorskip("torch")
    result = CliRunner().invoke(main, ["params"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[1:]}
    assert rows["AST-BS"] == "16,916" and rows["AST-NRP"] == "147,988"
    assert rows["AST-CNNRP"] == "16,936" and rows["AST-URP"] == "18,201"


def test_unknown_command_is_one_clear_line():
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code != 0 and "No such command" in result.output
