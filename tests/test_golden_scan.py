"""The scan's observable behaviour, recorded: rows, segments, exit codes and messages of `mictag scan`
on the tests' nasty library (tests/library.py), a first scan and a resumed one, compared with
tests/golden/scan.json. A refactor must leave all of it as it was.

Scores are compared to 2e-6 (the CSV prints six decimals; a CPU's last bit may differ), the
scan's timings and rates are masked in its messages, and the columns that depend on the clock or
on encoder bytes (mtime, content keys) are left out. Everything else is compared exactly.
To record the golden file again after an intended change: MICTAG_WRITE_GOLDEN=1 pytest tests/test_golden_scan.py
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from library import make_library

GOLDEN = Path(__file__).resolve().parent / "golden" / "scan.json"
VOLATILE = ("mtime", "content_sha256")
FIXED_MTIME = 1_700_000_000
SCORE_TOLERANCE = 2e-6


def _normalise(text: str, lib: Path, out: Path) -> list[str]:
    text = text.replace(str(lib), "<LIB>").replace(str(out), "<OUT>")
    text = re.sub(r"in \d+(\.\d+)? s\b", "in <T> s", text)
    text = re.sub(r"\d+(\.\d+)? (files|windows)/s", r"<R> \2/s", text)
    return [line for line in text.splitlines() if line.strip()]


def _scan(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MICTAG_HOME": str(home), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "mictag", "scan", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [{k: v for k, v in row.items() if k not in VOLATILE} for row in reader]
    return reader.fieldnames, sorted(rows, key=lambda r: r["path"])


def _segments(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    return sorted(lines, key=lambda s: json.dumps(s.get("path")) + json.dumps(s.get("start", s.get("start_s", 0))))


def record(tiny_tagger: Path, tmp: Path) -> dict:
    lib, out_dir, home = tmp / "lib", tmp / "out", tmp / "home"
    make_library(lib)
    for path in lib.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    out_dir.mkdir()
    out, seg = out_dir / "tags.csv", out_dir / "segments.jsonl"
    args = [str(lib), "--model", str(tiny_tagger), "--out", str(out), "--segments", str(seg),
            "--backend", "ort-cpu", "--precision", "fp32", "--workers", "1"]
    runs = [_scan(args, home), _scan(args, home)]  # a first scan, then a resumed one
    header, rows = _rows(out)
    return {"exit_codes": [r.returncode for r in runs],
            "stdout": [_normalise(r.stdout, lib, out_dir) for r in runs],
            "stderr": [_normalise(r.stderr, lib, out_dir) for r in runs],
            "header": header, "rows": rows, "segments": _segments(seg)}


def _same(a, b, where: str) -> None:
    """Equal, numbers within SCORE_TOLERANCE (a numeric CSV cell is a string here: compared as a number)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        assert abs(a - b) <= SCORE_TOLERANCE, f"{where}: {a} != {b}"
    elif isinstance(a, str) and isinstance(b, str) and re.fullmatch(r"-?\d+\.\d+", a) and re.fullmatch(r"-?\d+\.\d+", b):
        assert abs(float(a) - float(b)) <= SCORE_TOLERANCE, f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_the_scan_behaves_as_recorded(tiny_tagger, tmp_path):
    got = record(tiny_tagger, tmp_path)
    if os.environ.get("MICTAG_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        pytest.skip(f"recorded {GOLDEN}")
    expected = json.loads(GOLDEN.read_text("utf-8"))
    for key in ("exit_codes", "stdout", "stderr", "header"):
        assert got[key] == expected[key], key
    assert [r["path"] for r in got["rows"]] == [r["path"] for r in expected["rows"]]
    _same(got["rows"], expected["rows"], "rows")
    _same(got["segments"], expected["segments"], "segments")
