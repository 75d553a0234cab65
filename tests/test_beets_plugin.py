"""The beets plugin in a real beets library, driven through the real `beet` command line.

Each test library is a BEETSDIR of its own (config.yaml + library.db) into which real FLAC and MP3
files are imported with `beet import -A`; the plugin tags them with the tiny random AST exported
to ONNX (offline, seconds). Scores are checked against the Tagger API on the same files, the
`instruments` field through beets' own query language, and the file tags `write` puts in files
with mutagen, not beets.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

pytest.importorskip("beets")
mediafile = pytest.importorskip("mediafile")
mutagen = pytest.importorskip("mutagen")
pytest.importorskip("onnxruntime")

from library import signal  # noqa: E402  (tests/ is on the path: conftest)

REPO = Path(__file__).resolve().parents[1]
BEET = Path(sys.executable).with_name("beet")  # the console script beets installs beside this Python
if not BEET.is_file():  # pragma: no cover - an unusual layout: fall back to PATH
    BEET = Path(shutil.which("beet") or BEET)
pytestmark = pytest.mark.skipif(not BEET.is_file(), reason="beets' `beet` command is not installed")
MP3 = "MP3" in sf.available_formats()

# (file name, title, seconds, rate, channels, seed): a small album of tones, different in each track
TRACKS = [
    ("01 low drone.flac", "low drone", 3.0, 44100, 2, 10),
    ("02 high whistle.flac", "high whistle", 4.0, 22050, 1, 11),
    ("03 mixed.flac", "mixed", 2.5, 48000, 2, 12),
    ("04 mp3 take.mp3" if MP3 else "04 ogg take.ogg", "compressed take", 3.0, 44100, 2, 13),
]


# -- helpers -----------------------------------------------------------------------------------
def write_track(path: Path, title: str, album: str, track: int, seconds: float, rate: int, channels: int,
                seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal(seconds, rate, channels, seed), rate)
    tags = mediafile.MediaFile(str(path))
    tags.update({"title": title, "artist": "mictag test", "albumartist": "mictag test", "album": album,
                 "track": track})
    tags.save()
    return path


def beet(beetsdir: Path, *args: str, home: Path | None = None, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    """`beet ARGS` as a user runs it, against the library in ``beetsdir``. The repository is on
    PYTHONPATH so that beets finds this checkout's plugin whether or not it is installed."""
    env = {**os.environ, "BEETSDIR": str(beetsdir), "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if home is not None:
        env["MICTAG_HOME"] = str(home)
    return subprocess.run([str(BEET), *args], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                          timeout=300)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + (result.stderr or "")
    assert "Traceback" not in (result.stderr or "")
    return result


def make_beetsdir(root: Path, mictag: dict) -> Path:
    """A beets config dir whose library lives under ``root``; copies on import, never writes
    tags on import (the plugin's own `write` is what the tests exercise)."""
    beetsdir = root / "beets"
    beetsdir.mkdir(parents=True)
    lines = [f"directory: {root / 'music'}", f"library: {beetsdir / 'library.db'}",
             "import:", "    copy: yes", "    write: no", "plugins: mictag", "mictag:"]
    lines += [f"    {k}: {'' if v is None else v}" for k, v in mictag.items()]
    (beetsdir / "config.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return beetsdir


def stored(beetsdir: Path) -> dict[str, dict[str, str]]:
    """{title: {flexible attribute: raw stored value}} read straight from the library database,
    no beets and no plugin types in between."""
    db = sqlite3.connect(beetsdir / "library.db")
    try:
        rows = db.execute("SELECT items.title, item_attributes.key, item_attributes.value FROM items "
                          "LEFT JOIN item_attributes ON item_attributes.entity_id = items.id").fetchall()
    finally:
        db.close()
    out: dict[str, dict[str, str]] = {}
    for title, key, value in rows:
        out.setdefault(title, {})
        if key is not None:
            out[title][key] = value
    return out


def paths(beetsdir: Path, *query: str) -> set[str]:
    """The paths `beet ls -p QUERY` lists."""
    return set(ok(beet(beetsdir, "ls", "-p", *query)).stdout.splitlines())


def file_tag(path: str) -> list[str] | None:
    """The values of the INSTRUMENTS tag in a file as mutagen reads them, or None."""
    f = mutagen.File(path)
    if f is None or f.tags is None:
        return None
    if hasattr(f.tags, "getall"):  # ID3
        frames = f.tags.getall("TXXX:INSTRUMENTS")
        return [str(v) for v in frames[0].text] if frames else None
    return f.tags.get("INSTRUMENTS") or None


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tagger(tiny_ast_dir, tmp_path_factory) -> Path:
    """The tiny AST's zero-training tagger, frame-input ONNX."""
    from mictag.cli import main

    out = tmp_path_factory.mktemp("beets-model") / "tagger-fbank.onnx"
    result = CliRunner().invoke(main, ["export", "--ast", str(tiny_ast_dir), "--fbank-out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def album(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("beets-src") / "Tones"
    for n, (name, title, seconds, rate, channels, seed) in enumerate(TRACKS, 1):
        write_track(src / name, title, "Tones", n, seconds, rate, channels, seed)
    return src


@pytest.fixture(scope="module")
def reference(tiny_tagger, album):
    """{title: scores} from the Tagger API in fp32, and a threshold (with the label it splits)
    chosen so that some tracks are above it and some below: the query test then has both."""
    from mictag import Tagger

    tagger = Tagger(tiny_tagger, backend="ort-cpu")
    scores = {title: tagger.tag(album / name).scores for name, title, *_ in TRACKS}
    matrix = np.stack(list(scores.values()))
    best = (0.0, 0, 0.5)
    for j in range(matrix.shape[1]):
        column = np.sort(matrix[:, j])
        gaps = np.diff(column)
        i = int(np.argmax(gaps))
        if gaps[i] > best[0]:
            best = (float(gaps[i]), j, float(column[i] + column[i + 1]) / 2)
    gap, j, threshold = best
    assert gap > 1e-3, f"the tracks score alike on every label ({gap}); the query test needs a split"
    label = tagger.labels[j]
    assert not any(label in other for other in tagger.labels if other != label)  # a substring query is exact
    return scores, tagger.labels, label, round(threshold, 6)


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_tagger, album, reference):
    """A beets library holding the album, a FLAC whose audio is garbage and one whose file has
    gone, all imported with `beet import -A`; then `beet mictag` run once (its result kept)."""
    _, _, _, threshold = reference
    root = tmp_path_factory.mktemp("beets-lib")
    beetsdir = make_beetsdir(root, {"model": tiny_tagger, "backend": "ort-cpu", "threshold": threshold,
                                    "auto": "no", "workers": 1})
    ok(beet(beetsdir, "import", "-A", "-q", str(album)))
    broken = root / "src" / "Broken"
    write_track(broken / "garbage.flac", "garbage", "Broken", 1, 2.0, 44100, 1, 20)
    write_track(broken / "gone.flac", "gone", "Broken", 2, 2.0, 44100, 1, 21)
    ok(beet(beetsdir, "import", "-A", "-q", str(broken)))
    (garbage,) = paths(beetsdir, "title:garbage")
    (gone,) = paths(beetsdir, "title:gone")
    data = bytearray(Path(garbage).read_bytes())
    data[4:] = np.random.default_rng(0).integers(0, 256, len(data) - 4, dtype=np.uint8).tobytes()
    Path(garbage).write_bytes(bytes(data))  # still "fLaC" first: beets' own read would not notice
    Path(gone).unlink()
    first = beet(beetsdir, "mictag")
    return beetsdir, garbage, gone, first


# -- tests -------------------------------------------------------------------------------------
def test_loading_the_plugin_imports_no_engine():
    """beets loads every enabled plugin on every `beet` command: loading this one must stay cheap."""
    code = ("import sys, beetsplug.mictag as m; heavy = [n for n in ('numpy', 'onnxruntime', 'openvino', 'torch', "
            "'mictag.runtime') if n in sys.modules]; print(heavy); assert m.MictagPlugin")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_tagging_stores_the_tagger_api_scores_and_instruments(library, reference, tiny_tagger):
    from mictag.api import model_identity

    beetsdir, _, _, first = library
    scores, labels, _, threshold = reference
    attrs = stored(beetsdir)
    for title, expect in scores.items():
        got = attrs[title]
        np.testing.assert_allclose([float(got[f"mictag_{l}"]) for l in labels], expect, atol=2e-6, err_msg=title)
        assert got["instruments"] == ";".join(l for l, s in zip(labels, expect) if s >= threshold), title
        assert got["mictag_model"] == model_identity(tiny_tagger, threshold)
        assert got["mictag_model"].startswith("tagger-fbank.onnx sha256:") and f"threshold={threshold:g}" in got["mictag_model"]
    assert "4 tagged, 0 already tagged" in first.stderr
    # `write` is off: the files are as imported
    assert all(file_tag(p) is None for p in paths(beetsdir, "album:Tones"))


def test_a_real_query_finds_the_items_with_an_instrument(library, reference):
    beetsdir, *_ = library
    scores, labels, label, threshold = reference
    expect = {t for t, s in scores.items() if s[labels.index(label)] >= threshold}
    assert 0 < len(expect) < len(scores)  # the threshold splits the album on this label
    by_title = {line.split("\t")[0]: line.split("\t")[1]
                for line in ok(beet(beetsdir, "ls", "-f", "$title\t$path", "album:Tones")).stdout.splitlines()}
    assert paths(beetsdir, f"instruments:{label}") == {by_title[t] for t in expect}
    # the scores are typed floats: a numeric range query agrees with the instruments field
    assert paths(beetsdir, f"mictag_{label}:{threshold}..") == {by_title[t] for t in expect}
    shown = ok(beet(beetsdir, "ls", "-f", f"$mictag_{label}", "title:low drone")).stdout.strip()
    assert shown == f"{scores['low drone'][labels.index(label)]:.3f}"


def test_bad_files_are_one_line_each_and_the_others_are_tagged(library):
    beetsdir, garbage, gone, first = library
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
    lines = first.stderr.splitlines()
    (bad,) = [l for l in lines if garbage in l]
    (missing,) = [l for l in lines if gone in l]
    assert bad.startswith(f"mictag: {garbage}: ") and len(bad) > len(f"mictag: {garbage}: ") + 5
    assert missing == f"mictag: {gone}: cannot read (No such file or directory)"  # the scan's words
    assert "error: mictag: 2 of 6 items could not be tagged (see above)" in lines
    attrs = stored(beetsdir)
    assert "mictag_model" not in attrs["garbage"] and "mictag_model" not in attrs["gone"]


def test_a_second_run_skips_what_is_tagged_and_force_redoes_it(library, reference):
    beetsdir, *_ = library
    scores, labels, label, _ = reference
    key = f"mictag_{label}"
    ok(beet(beetsdir, "modify", "-y", "-W", f"{key}=0.999", "title:mixed"))
    again = beet(beetsdir, "mictag", "album:Tones")
    ok(again)
    assert "0 tagged, 4 already tagged by tagger-fbank.onnx" in again.stderr and "-f tags them again" in again.stderr
    assert float(stored(beetsdir)["mixed"][key]) == 0.999  # skipped: left as it was
    forced = ok(beet(beetsdir, "mictag", "-f", "title:mixed"))
    assert "1 tagged, 0 already tagged" in forced.stderr
    assert float(stored(beetsdir)["mixed"][key]) == pytest.approx(scores["mixed"][labels.index(label)], abs=2e-6)


def test_progress_shows_on_a_terminal(library):
    """On a terminal the command keeps one progress line on stderr (and erases it at the end)."""
    beetsdir, *_ = library
    main_fd, tty_fd = os.openpty()
    try:
        done = beet(beetsdir, "mictag", "-f", "title:drone", stderr=tty_fd)
        os.close(tty_fd)
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(main_fd)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert done.returncode == 0, text
    assert "\rmictag: 1/1 items" in text and "windows/s" in text
    assert "1 tagged" in text


def test_import_tags_with_auto_and_write_puts_instruments_in_the_files(tmp_path, tiny_tagger, album, reference):
    scores, labels, _, _ = reference
    beetsdir = make_beetsdir(tmp_path, {"model": tiny_tagger, "backend": "ort-cpu", "auto": "yes", "write": "yes",
                                        "workers": 0})
    ok(beet(beetsdir, "import", "-A", "-q", str(album)))
    attrs = stored(beetsdir)
    for title, expect in scores.items():  # tagged by the import stage, with the model's thresholds (0.5)
        np.testing.assert_allclose([float(attrs[title][f"mictag_{l}"]) for l in labels], expect, atol=2e-6)
        assert attrs[title]["instruments"] == ";".join(l for l, s in zip(labels, expect) if s >= 0.5)
    # An as-is import writes no tags (beets' rule); `beet mictag` with write on does, through
    # item.try_write(). A new threshold is a new mictag_model: redone without -f.
    (tmp_path / "strict.yaml").write_text("mictag:\n    threshold: 0.52\n", encoding="utf-8")
    run = ok(beet(beetsdir, "-c", str(tmp_path / "strict.yaml"), "mictag"))
    assert "4 tagged, 0 already tagged" in run.stderr
    attrs = stored(beetsdir)
    for title, expect in scores.items():
        assert attrs[title]["instruments"] == ";".join(l for l, s in zip(labels, expect) if s >= 0.52)
        assert attrs[title]["mictag_model"].endswith(" threshold=0.52")
    listed = ok(beet(beetsdir, "ls", "-f", "$title\t$path")).stdout.splitlines()
    for title, path in (line.split("\t") for line in listed):
        assert file_tag(path) == attrs[title]["instruments"].split(";"), path  # one value per instrument
        assert path.startswith(str(tmp_path / "music"))  # the library's copy, not the source


def test_no_model_is_one_clear_error_and_the_cached_default_is_used(tmp_path, tiny_tagger, album):
    home = tmp_path / "mictag-home"
    home.mkdir()
    beetsdir = make_beetsdir(tmp_path, {"model": None, "auto": "yes", "backend": "ort-cpu", "workers": 0})
    imported = ok(beet(beetsdir, "import", "-A", "-q", str(album), home=home))
    warnings = [l for l in imported.stderr.splitlines() if "mictag models pull" in l]
    assert len(warnings) == 1 and "imported untagged" in warnings[0]
    assert len(paths(beetsdir, "album:Tones")) == len(TRACKS)
    failed = beet(beetsdir, "mictag", home=home)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert f"error: mictag: no AST tagger built in {home / 'models'}: run `mictag models pull`" in failed.stderr
    assert "set `model:` under `mictag:`" in failed.stderr
    (tmp_path / "musicnn.yaml").write_text("mictag:\n    backbone: musicnn\n", encoding="utf-8")
    failed = beet(beetsdir, "-c", str(tmp_path / "musicnn.yaml"), "mictag", home=home)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "error: mictag: no musicnn weights (MTT_musicnn)" in failed.stderr and "mictag models pull musicnn" in failed.stderr
    # `mictag models pull` leaves the default tagger in the cache under this name; the plugin takes it.
    (home / "models").mkdir()
    shutil.copy(tiny_tagger, home / "models" / "zero-training-0123456789ab.onnx")
    run = ok(beet(beetsdir, "mictag", home=home))
    assert f"{len(TRACKS)} tagged" in run.stderr
    assert {a["mictag_model"].split(" ")[0] for a in stored(beetsdir).values()} == {"zero-training-0123456789ab.onnx"}


def test_mictag_similar_prints_the_nearest_items_and_stores_nothing(library, tiny_tagger, tmp_path):
    pytest.importorskip("pyarrow")
    from mictag.cli import main
    from mictag.output.embeddings import read_table

    beetsdir, _, _, _ = library
    music = beetsdir.parent / "music"
    emb = tmp_path / "emb.parquet"
    result = CliRunner().invoke(main, ["scan", str(music), "--out", str(tmp_path / "tags.csv"), "--embeddings",
                                       str(emb), "--model", str(tiny_tagger), "--backend", "ort-cpu", "-q"])
    assert result.exit_code == 1, result.output  # the garbage file
    before = stored(beetsdir)
    out = ok(beet(beetsdir, "mictag-similar", "-e", str(emb), "-k", "2", "title:low drone")).stdout.splitlines()
    table = read_table(emb)
    (query,) = [p for p in table.index if "low drone" in p]
    sims = table.vectors @ table.vectors[table.index[query]]
    order = [table.rows[i]["path"] for i in np.argsort(-sims) if table.rows[i]["path"] != query][:2]
    assert len(out) == 2
    for line, path in zip(out, order):
        similarity, shown = line.split("  ", 1)
        title = next(t for name, t, *_ in TRACKS if Path(path).stem.endswith(t))
        assert shown.endswith(f"- {title}")  # beets' own item line: artist - album - title
        assert abs(float(similarity) - float(sims[table.index[path]])) < 1e-3
    assert stored(beetsdir) == before  # nothing new in the library
    missing = beet(beetsdir, "mictag-similar", "title:low drone")
    assert missing.returncode != 0 and "set `mictag: embeddings" in missing.stderr and "Traceback" not in missing.stderr
    none = beet(beetsdir, "mictag-similar", "-e", str(emb), "title:no such title")
    assert none.returncode != 0 and "no item matches" in none.stderr
