"""`mictag similar` and its index: exact answers equal brute force, HNSW answers recall them, the
index persists, follows a growing table incrementally and is never used stale; the CLI's query
kinds (in the table, on disk, any audio file), filters and formats; the refusals; and on real
audio a file and its lossy re-encodings are each other's nearest neighbours."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mictag.cli import main

pytest.importorskip("pyarrow")
pytest.importorskip("onnxruntime")

TIMGM = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


def mictag(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(5, n // 100), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def lines_of(vectors: np.ndarray, names: list[str], model: str = "m" * 64) -> list[dict]:
    return [{"path": name, "size_bytes": 100 + i, "mtime": 1.0e9 + i, "content_sha256": f"{i:064x}",
             "model_sha256": model, "embedding": v} for i, (name, v) in enumerate(zip(names, vectors))]


def brute_force(vectors: np.ndarray, q: int, k: int, allowed=None) -> list[int]:
    sims = vectors @ vectors[q]
    order = [int(i) for i in np.argsort(-sims, kind="stable") if i != q and (allowed is None or i in allowed)]
    return order[:k]


# -- the index -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_answers_equal_brute_force_and_the_index_persists(kind, tmp_path, monkeypatch):
    if kind == "hnsw":
        pytest.importorskip("usearch")
    from mictag.output.embeddings import write_table
    from mictag.similar import index as idx

    monkeypatch.setattr(idx, "EXACT_UP_TO", 100)  # hnsw answers for real, not from its exact shortcut
    vectors = clustered(3000, 48, seed=1)
    names = [f"album {i // 10}/track {i}.flac" for i in range(len(vectors))]
    table = tmp_path / "emb.parquet"
    write_table(table, lines_of(vectors, names))
    said: list[str] = []
    index = idx.open_index(table, kind, on_message=said.append)
    assert index.kind == kind and len(index) == 3000 and said and "built" in said[0]
    recalls = []
    for q in range(0, 3000, 97):
        found = index.search(index.vector(q), 10, exclude={q})
        want = brute_force(vectors, q, 10)
        keys = [k for k, _ in found]
        sims = [s for _, s in found]
        assert q not in keys and sims == sorted(sims, reverse=True)
        np.testing.assert_allclose(sims, vectors[keys] @ vectors[q], atol=1e-6)  # exact scores, whatever proposed them
        if kind == "exact":
            assert keys == want
        recalls.append(len(set(keys) & set(want)) / 10)
    assert np.mean(recalls) >= (1.0 if kind == "exact" else 0.95)
    # allowed: only those keys
    allowed = np.arange(0, 3000, 3)
    found = index.search(index.vector(5), 7, allowed=allowed, exclude={5})
    assert [k for k, _ in found] == brute_force(vectors, 5, 7, set(allowed.tolist()))
    said.clear()
    again = idx.open_index(table, "auto", on_message=said.append)  # the same table: used as it is
    assert not said and again.kind == kind
    with pytest.raises(idx.EmbeddingsError, match="width"):
        again.search(np.ones(47, np.float32), 3)


def test_a_growing_table_refreshes_the_index_incrementally_never_silently(tmp_path):
    pytest.importorskip("usearch")
    from mictag.output.embeddings import write_table
    from mictag.similar.index import open_index

    vectors = clustered(600, 32, seed=2)
    names = [f"t{i}.flac" for i in range(600)]
    lines = lines_of(vectors, names)
    table = tmp_path / "emb.parquet"
    write_table(table, lines[:500])
    for kind in ("exact", "hnsw"):
        open_index(table, kind)  # built (hnsw replaces exact: another kind asked for)
    said: list[str] = []
    write_table(table, lines[:500])  # the same rows rewritten: a new mtime, nothing to add
    index = open_index(table, on_message=said.append)
    assert index.kind == "hnsw" and "+0 files, -0 retired" in said[-1]
    # The scan goes on: 99 new files; one file scanned again (a new vector); one file gone.
    changed = dict(lines[7], mtime=2.0e9, embedding=vectors[599])
    grown = [l for i, l in enumerate(lines[:500]) if i not in (7, 9)] + [changed] + lines[500:599]
    write_table(table, grown)
    said.clear()
    index = open_index(table, on_message=said.append)
    assert "+100 files, -2 retired" in said[-1]
    assert len(index) == 598 and index.key_of("t9.flac") is None
    np.testing.assert_array_equal(index.vector(index.key_of("t7.flac")), vectors[599])
    got = index.search(vectors[599], 1)
    assert index.path(got[0][0]) == "t7.flac"  # the new vector, not the retired one
    for q in (3, 512, 598):
        keys = [index.path(k) for k, _ in index.search(vectors[q], 5)]
        assert "t9.flac" not in keys
    # A refresh that crashed after appending vectors (and before its manifest) is redone cleanly.
    with open(index.folder / "vectors.f32", "ab") as f:
        f.write(np.ones(32 * 5, np.float32).tobytes())
    write_table(table, grown + [dict(lines[599], path="late.flac")])
    index = open_index(table)
    np.testing.assert_array_equal(index.vector(index.key_of("late.flac")), vectors[599])
    assert index.manifest.keys == 500 + 100 + 1  # built, the refresh (99 new, 1 again), late.flac


def test_another_model_or_a_damaged_index_rebuilds(tmp_path):
    from mictag.output.embeddings import write_table
    from mictag.similar.index import open_index

    vectors = clustered(50, 16, seed=3)
    table = tmp_path / "emb.parquet"
    write_table(table, lines_of(vectors, [f"f{i}" for i in range(50)]))
    open_index(table, "exact")
    write_table(table, lines_of(vectors[:40], [f"f{i}" for i in range(40)], model="n" * 64))
    said: list[str] = []
    index = open_index(table, on_message=said.append)
    assert "built" in said[-1] and index.manifest.model_sha256 == "n" * 64 and index.manifest.keys == 40
    (index.folder / "rows.parquet").write_bytes(b"not parquet")
    said.clear()
    index = open_index(table, on_message=said.append)
    assert "built" in said[-1] and len(index) == 40


def test_what_is_not_an_embeddings_table_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mictag.output.embeddings import EmbeddingsError
    from mictag.similar.index import open_index

    pq.write_table(pa.table({"path": ["a"], "x": [1]}), tmp_path / "other.parquet")
    (tmp_path / "tags.csv").write_text("path,tags\na,guitar\n")
    for bad, why in (("other.parquet", "not an embeddings table"), ("tags.csv", "not a readable Parquet"),
                     ("missing.parquet", "does not exist")):
        with pytest.raises(EmbeddingsError, match=why):
            open_index(tmp_path / bad)


# -- the command, on a scanned library -------------------------------------------------------------
@pytest.fixture(scope="module")
def scanned(tiny_ast_dir, tmp_path_factory):
    from library import make_library

    base = tmp_path_factory.mktemp("similar")
    assert mictag("export", "--ast", tiny_ast_dir, "--fbank-out", base / "f.onnx").exit_code == 0
    lib = base / "lib"
    make_library(lib)
    result = mictag("scan", lib, "--out", base / "tags.csv", "--embeddings", base / "emb.parquet",
                    "--model", base / "f.onnx", "--workers", 1, "--precision", "fp32")
    assert result.exit_code == 1, result.output  # the library's broken files
    return base


def _json(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_answers_nearest_first_without_the_query(scanned):
    from mictag.output.embeddings import read_table

    table = read_table(scanned / "emb.parquet")
    query = "flac/stereo 22k.flac"
    got = _json(mictag("similar", scanned / "emb.parquet", query, "-k", 4, "--format", "json"))
    assert [set(g) for g in got] == [{"path", "similarity"}] * 4
    q = table.index[query]
    want = brute_force(table.vectors, q, 4)
    assert [g["path"] for g in got] == [table.rows[i]["path"] for i in want]
    np.testing.assert_allclose([g["similarity"] for g in got], table.vectors[want] @ table.vectors[q], atol=1e-6)
    on_disk = _json(mictag("similar", scanned / "emb.parquet", scanned / "lib" / query, "-k", 4, "--format", "json"))
    assert on_disk == got  # its path on disk names the same file
    every = _json(mictag("similar", scanned / "emb.parquet", query, "-k", 100, "--format", "json"))
    assert len(every) == len(table) - 1 and query not in {g["path"] for g in every}


def test_a_file_outside_the_library_is_scored_with_the_tables_model(scanned, tmp_path):
    from mictag import Tagger
    from mictag.output.embeddings import read_table

    from library import signal as tone

    table = read_table(scanned / "emb.parquet")
    copy = tmp_path / "the same bytes.flac"
    shutil.copy(scanned / "lib" / "flac/stereo 22k.flac", copy)
    result = mictag("similar", scanned / "emb.parquet", copy, "-k", 3, "--format", "json")
    assert "the same bytes as flac/stereo 22k.flac" in result.stderr
    assert "flac/stereo 22k.flac" not in {g["path"] for g in _json(result)}  # the query itself, under its other name
    new = tmp_path / "new.wav"
    sf.write(new, tone(4.0, 32000, 2, 99), 32000, subtype="PCM_16")
    result = mictag("similar", scanned / "emb.parquet", new, "-k", 5, "--format", "json")
    assert "scored with f.onnx" in result.stderr
    vector = Tagger(scanned / "f.onnx", precision="fp32", embeddings=True).tag(new).embedding
    sims = table.vectors @ vector
    want = [table.rows[i]["path"] for i in np.argsort(-sims, kind="stable")[:5]]
    assert [g["path"] for g in _json(result)] == want


def test_tags_restrict_and_m3u_lists_files_a_player_opens(scanned, tmp_path):
    rows = list(csv.DictReader((scanned / "tags.csv").open(encoding="utf-8")))
    counts: dict[str, int] = {}
    for r in rows:
        for t in filter(None, r["tags"].split(";")):
            counts[t] = counts.get(t, 0) + 1
    label = max(counts, key=counts.get)
    tagged = {r["path"] for r in rows if label in r["tags"].split(";")}
    got = _json(mictag("similar", scanned / "emb.parquet", "flac/stereo 22k.flac", "-k", 50, "--tags", label,
                       "--format", "json"))
    assert {g["path"] for g in got} == tagged - {"flac/stereo 22k.flac"}
    # another tags file: only what it tags
    other = tmp_path / "few.csv"
    with other.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([dict(r, tags="piano" if r["path"].startswith("wav/") else "") for r in rows])
    got = _json(mictag("similar", scanned / "emb.parquet", "flac/stereo 22k.flac", "--tags", "piano",
                       "--tags-file", other, "--format", "json"))
    assert got and all(g["path"].startswith("wav/") for g in got)
    playlist = mictag("similar", scanned / "emb.parquet", "flac/stereo 22k.flac", "-k", 3, "--format", "m3u")
    assert playlist.exit_code == 0
    lines = playlist.stdout.splitlines()
    assert lines[0] == "#EXTM3U"
    entries = [l for l in lines if l and not l.startswith("#")]
    assert len(entries) == 3 and all(Path(e).is_absolute() and Path(e).is_file() for e in entries)


def test_mistakes_are_one_line_and_exit_2(scanned, tmp_path):
    emb = scanned / "emb.parquet"
    other = tmp_path / "other.onnx"
    shutil.copy(scanned / "f.onnx", other)
    with open(other, "ab") as f:
        f.write(b"\0")  # other bytes: another model, as far as the table's digest can tell
    noise = tmp_path / "noise.wav"
    sf.write(noise, np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
    broken = tmp_path / "broken.mp3"
    broken.write_text("not audio at all\n" * 50)
    cases = [
        (["similar", emb, noise, "--model", other], "is not the model the table was made with"),
        (["similar", emb, broken], "cannot use the query"),
        (["similar", emb, tmp_path / "nowhere.flac"], "neither a file of the table nor an audio file"),
        (["similar", scanned / "tags.csv", "flac/stereo 22k.flac"], "not a readable Parquet"),
        (["similar", emb, "flac/stereo 22k.flac", "--tags", "kazoo"], "kazoo is not a label"),
        (["similar", emb, "flac/stereo 22k.flac", "-k", 0], "-k must be at least 1"),
        (["similar", emb], "give a QUERY"),
    ]
    for args, needle in cases:
        result = mictag(*args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.stderr and "Traceback" not in result.output, (args, result.stderr)
    built = mictag("similar", emb, "--build", "--index", "exact")
    assert built.exit_code == 0 and "built the exact index" in built.stderr


# -- robustness on real audio ------------------------------------------------------------------------
def _encode(path: Path, x: np.ndarray, rate: int, codec: str) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.bit_rate = 128_000
        stream.layout = "stereo"
        planar = stream.codec_context.format.name.endswith("p")
        for i in range(0, x.shape[0], 1152):
            block = x[i : i + 1152]
            data = np.ascontiguousarray(block.T) if planar else np.ascontiguousarray(block.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(data, format="fltp" if planar else "flt", layout="stereo")
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture(scope="module")
def reencoded(tmp_path_factory):
    """20 clips of sampled instruments (FluidSynth, TimGM6mb), each as FLAC, MP3 128 kbit/s and
    AAC 128 kbit/s at 44.1 kHz."""
    if not TIMGM.is_file():
        pytest.skip("timgm6mb-soundfont is not installed")
    soxr = pytest.importorskip("soxr")
    from mictag.corpus.midi import Note, Part
    from mictag.corpus.synth import SynthError, render_parts

    lib = tmp_path_factory.mktemp("reencoded") / "lib"
    lib.mkdir()
    rng = np.random.default_rng(0)
    programs = [0, 4, 11, 19, 24, 25, 32, 40, 42, 56, 57, 65, 68, 71, 73, 21, 46, 52, 105, 13]
    for i, program in enumerate(programs):
        notes = [Note(t * 0.3 + rng.uniform(0, 0.05), 0.25 + rng.uniform(0, 0.3), int(rng.integers(48, 76)),
                      int(rng.integers(60, 120))) for t in range(30)]
        try:
            (x,) = render_parts([(TIMGM, Part(i % 9, program, 0, notes))], 10.0)
        except SynthError as exc:
            pytest.skip(str(exc))
        x = soxr.resample(x, 16000, 44100).astype(np.float32)
        stereo = np.stack([x, np.roll(x, 30)], axis=1) * 0.8
        sf.write(lib / f"clip{i:02d}.flac", stereo, 44100, subtype="PCM_16")
        try:
            _encode(lib / f"clip{i:02d}.mp3", stereo, 44100, "libmp3lame")
            _encode(lib / f"clip{i:02d}.m4a", stereo, 44100, "aac")
        except Exception as exc:  # pragma: no cover - depends on the FFmpeg build
            pytest.skip(f"this FFmpeg cannot encode MP3 and AAC ({exc})")
    return lib


def _recall_at_1(table) -> float:
    sims = table.vectors @ table.vectors.T
    np.fill_diagonal(sims, -np.inf)
    stem = [Path(r["path"]).stem for r in table.rows]
    return float(np.mean([stem[i] == stem[j] for i, j in enumerate(sims.argmax(axis=1))]))


@pytest.fixture(scope="module")
def real_musicnn_tagger():
    """The shipped musicnn-openmic20 tagger on musicnn's real weights: converted weights from the
    user's own cache where they are, else fetched with pip (skipped where neither works)."""
    pytest.importorskip("torch")
    from mictag.catalog import default_model
    from mictag.paths import mictag_home

    here = mictag_home() / "models" / "musicnn"
    mine = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mictag" / "models" / "musicnn"
    if not (here / "manifest.json").is_file():
        if (mine / "manifest.json").is_file() and mine != here:
            shutil.copytree(mine, here, dirs_exist_ok=True)
        else:
            from mictag.catalog import pull_musicnn

            try:
                pull_musicnn()
            except Exception as exc:  # offline, or no such wheel on this registry
                pytest.skip(f"musicnn's real weights are not to be had here ({exc})")
    return default_model(backbone="musicnn")


@pytest.mark.parametrize("which", ["musicnn", "tiny-ast"])
def test_a_file_and_its_lossy_reencodings_are_nearest_neighbours(which, reencoded, scanned, tmp_path, request):
    from mictag.output.embeddings import read_table

    model = request.getfixturevalue("real_musicnn_tagger") if which == "musicnn" else scanned / "f.onnx"
    result = mictag("scan", reencoded, "--out", tmp_path / "tags.csv", "--embeddings", tmp_path / "emb.parquet",
                    "--model", model, "--workers", 1)
    assert result.exit_code == 0, result.output
    table = read_table(tmp_path / "emb.parquet")
    assert len(table) == 60
    recall = _recall_at_1(table)
    print(f"{which}: recall@1 of a file's re-encodings among {len(table)} files: {recall:.3f}", file=sys.stderr)
    assert recall >= (0.95 if which == "musicnn" else 0.9)
    got = _json(mictag("similar", tmp_path / "emb.parquet", "clip07.flac", "-k", 2, "--format", "json"))
    if which == "musicnn":
        assert {g["path"] for g in got} == {"clip07.mp3", "clip07.m4a"}


def test_the_report_shows_the_nearest_files_of_a_sample(scanned, tmp_path):
    from mictag.output.embeddings import read_table
    from mictag.report.data import build
    from mictag.report.html import render

    data = build(scanned / "tags.csv", embeddings=scanned / "emb.parquet", similar=6, seed=3)
    sim = data["similar"]
    table = read_table(scanned / "emb.parquet")
    assert sim["given"] and sim["sampled"] == 6 and sim["total"] == len(table) and sim["k"] == 10
    tags = {r["path"]: r["tags"] for r in csv.DictReader((scanned / "tags.csv").open(encoding="utf-8"))}
    for q, near in sim["files"]:
        path = sim["names"][q]
        want = brute_force(table.vectors, table.index[path], 10)
        assert [sim["names"][n] for n, _ in near] == [table.rows[i]["path"] for i in want]
        assert [s for _, s in near] == [round(1000 * float(table.vectors[i] @ table.vectors[table.index[path]]))
                                        for i in want]
        for n, _ in near:
            assert sim["tags"][n] == [t for t in tags[sim["names"][n]].split(";") if t]
    page = render(data)
    assert 'id="similar"' in page and 'id="sselect"' in page
    again = build(scanned / "tags.csv", embeddings=scanned / "emb.parquet", similar=6, seed=3)["similar"]
    assert again["files"] == sim["files"]  # the sample is seeded
    result = mictag("report", scanned / "tags.csv", "--embeddings", scanned / "emb.parquet", "--out",
                    tmp_path / "r.html", "--similar", 4)
    assert result.exit_code == 0, result.output
    bad = mictag("report", scanned / "tags.csv", "--embeddings", scanned / "tags.csv", "--out", tmp_path / "x.html")
    assert bad.exit_code == 2 and "not a readable Parquet" in bad.output


from test_report import Chromium, chromium  # noqa: E402,F401  (the browser fixture)


def test_the_similar_panel_works_in_chromium(chromium, scanned, tmp_path):  # noqa: F811
    from mictag.report import make_report

    out = tmp_path / "report.html"
    make_report(scanned / "tags.csv", out, embeddings=scanned / "emb.parquet", similar=100)  # every file
    page = chromium.open(out.as_uri())
    try:
        assert page.evaluate("document.documentElement.getAttribute('data-ready')") == "1"
        shown = page.evaluate("""(() => { const f = document.getElementById('sfilter'); f.value = 'stereo 22k';
          f.dispatchEvent(new Event('input'));
          return {options: [...document.querySelectorAll('#sselect option')].map(o => o.textContent),
                  info: document.getElementById('sinfo').textContent,
                  rows: [...document.querySelectorAll('#stable tbody tr')].map(tr =>
                    [...tr.children].map(td => td.textContent))}; })()""")
        assert page.problems() == []
    finally:
        page.close()
    assert shown["options"] == ["flac/stereo 22k.flac"] and shown["info"].startswith("flac/stereo 22k.flac")
    assert len(shown["rows"]) == 10 and [r[0] for r in shown["rows"]] == [str(i) for i in range(1, 11)]
    sims = [float(r[1]) for r in shown["rows"]]
    assert sims == sorted(sims, reverse=True)
