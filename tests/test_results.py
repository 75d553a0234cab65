"""The scan output as a resume journal: rows read back exactly, and a file is the same only when
its size and mtime are."""

from __future__ import annotations

import numpy as np

from mictag.output.rows import FileResult, same_file
from mictag.output.formats import JsonlWriter, read_rows


def test_a_jsonl_row_whose_path_holds_a_line_separator_reads_back(tmp_path):
    out = tmp_path / "tags.jsonl"
    writer = JsonlWriter(out, ["a", "b"], fresh=True)
    names = ["plain.flac", "odd\u2028name.flac", "odd\u0085name\x1c.ogg"]
    for i, name in enumerate(names):
        writer.write(FileResult(name, 10 + i, 1.5e9 + i, 1.0, 1, scores=np.array([0.1, 0.9], np.float32), tags=["b"]))
    writer.close(quiet=True)
    assert [r["path"] for r in read_rows(out, "jsonl")] == names


def test_same_file_tells_apart_mtimes_a_second_apart_at_todays_dates():
    row = {"size_bytes": "100", "mtime": "1800000000.25"}
    assert same_file(row, 100, 1800000000.2504)
    assert not same_file(row, 100, 1800000001.25)  # rel_tol would have called this the same
    assert not same_file(row, 101, 1800000000.25)
