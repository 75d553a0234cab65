"""Options are checked where they are made: the API and the CLI refuse the same bad values with
the same typed error, and the CLI prints it as one line (exit 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mictag.errors import ConfigError
from mictag.runtime.scan.pipeline import ScanOptions


@pytest.mark.parametrize("options, words", [
    ({"threshold": 2.0}, "threshold must be between 0 and 1"),
    ({"threshold": -0.1}, "threshold must be between 0 and 1"),
    ({"aggregate": "median"}, "aggregate must be max or mean"),
    ({"feed": "carrier pigeon"}, "feed must be one of"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"workers": -1}, "workers cannot be negative"),
    ({"hop_seconds": 0.0}, "hop_seconds must be positive"),
])
def test_bad_scan_options_are_refused_where_they_are_made(options, words):
    with pytest.raises(ConfigError, match=words):
        ScanOptions(**options)


def test_good_options_pass():
    ScanOptions(threshold=0.0, aggregate="mean", feed="pickle", batch_size=1, workers=0, hop_seconds=0.5)
    ScanOptions(threshold=1.0)


def test_the_tagger_refuses_a_threshold_the_cli_refuses(tiny_tagger):
    from mictag.api import Tagger

    with pytest.raises(ConfigError, match="threshold must be between 0 and 1"):
        Tagger(tiny_tagger, threshold=2)


def test_the_cli_says_it_in_one_line(tmp_path, tiny_tagger):
    (tmp_path / "lib").mkdir()
    done = subprocess.run([sys.executable, "-m", "mictag", "scan", str(tmp_path / "lib"), "--model", str(tiny_tagger),
                           "--out", str(tmp_path / "t.csv"), "--threshold", "2"], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "--threshold must be between 0 and 1, not 2.0" in done.stderr  # the flag the user typed
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
