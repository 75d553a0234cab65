"""A fast path writes only what stays within its bound of fp32 (mictag.runtime.engines.trust): sampled
checks across the whole scan at a bounded cost, borderline windows scored on fp32, rows held until a
check covers them, and a failed check redoing everything it could have touched; verdicts per model
file and library. The scans run the real pipeline (0 and 2 decode workers) on real files, with a
fast path that agrees with fp32 on the first windows and deviates later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mictag.cli import main
from mictag.runtime.engines.choice import EnginePlan
from mictag.runtime.engines.trust import BOUND, CHECK_BUDGET, CheckOutcome, RowGate, TrustedBackend, Verdicts

sys.path.insert(0, str(Path(__file__).parent))
from library import read_table, signal as tone  # noqa: E402
from trust_fakes import Deviating  # noqa: E402

VNNI_ONLY = "avx2 fma avx512f avx512_vnni"  # int8 dot products, no bf16: auto takes the int8 variant


@pytest.fixture(scope="module")
def model(tiny_tagger) -> Path:
    return tiny_tagger


def _library(root: Path, files: int = 14) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(files):
        seconds = float(rng.uniform(1.5, 7.0))
        sub = root / f"album {i % 3}"
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"track {i:02d}.flac", tone(seconds, 16000, 1, seed=i)[:, 0], 16000)
    return root


@pytest.fixture
def vnni_cpu(monkeypatch, tmp_path):
    from mictag import cpu

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MICTAG_CPU_FLAGS", VNNI_ONLY)
    cpu.cpu_info.cache_clear()
    yield
    cpu.cpu_info.cache_clear()


def _scores(row: dict, labels: list[str]) -> np.ndarray:
    return np.array([float(row[label]) for label in labels])


def _assert_within_bound(got: dict, want: dict, labels: list[str]) -> float:
    assert got.keys() == want.keys()
    worst = 0.0
    for path, row in want.items():
        if row["status"] not in ("ok", "partial"):
            continue
        dev = np.abs(_scores(got[path], labels) - _scores(row, labels)).max()
        assert dev <= BOUND, (path, dev)
        assert got[path]["tags"] == row["tags"], (path, got[path]["tags"], row["tags"])
        worst = max(worst, float(dev))
    return worst


def _scan(lib, out, model, workers, **kw):
    from mictag.runtime.scan.pipeline import ScanOptions
    from mictag.runtime.scan.run import ScanRequest, run_scan

    say = kw.pop("on_message", None)
    return run_scan(ScanRequest(lib, out, model, options=ScanOptions(workers=workers), **kw), on_message=say)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_fast_path_that_deviates_later_never_leaves_an_out_of_bound_score_or_a_flipped_tag(
        model, vnni_cpu, tmp_path, workers, monkeypatch):
    from mictag.metadata import read_metadata
    from mictag.runtime.engines.open import plan_engine

    labels = read_metadata(model)["labels"]
    lib = _library(tmp_path / "lib")
    reference = _scan(lib, tmp_path / "fp32.csv", model, workers, backend="ort-cpu", precision="fp32")
    assert reference.windows > 40
    monkeypatch.setattr("mictag.runtime.engines.open._load", _deviating_load(after=20))
    said = []
    summary = _scan(lib, tmp_path / "tags.csv", model, workers, on_message=said.append)
    got, want = read_table(tmp_path / "tags.csv"), read_table(tmp_path / "fp32.csv")
    _assert_within_bound(got, want, labels)  # not one score or tag of the deviating stretch survived
    assert any("failed a check" in m for m in said), said
    assert not (tmp_path / "tags.csv.mictag-redo.json").exists()  # every replaced row is gone
    assert all(r["content_sha256"] for r in got.values())  # redone rows keep their content key
    notes = " ".join(summary.notes)
    assert "scored again on fp32" in notes and "int8 checked against fp32" in notes, notes
    assert "after openvino int8 was left" in summary.backend or "after ort-cpu int8 was left" in summary.backend
    # the library's next scan starts on the reference; another library still gets the fast path
    plan = plan_engine(model, library=lib)
    assert plan.precision == "fp32" and "int8 refused on this library: a checked window was" in plan.reason
    assert plan_engine(model, library=tmp_path / "elsewhere").precision == "int8"
    shown = CliRunner().invoke(main, ["info", "--model", str(model), "--library", str(lib)]).output
    assert "runs on openvino fp32 (int8 refused on this library" in shown or "runs on ort-cpu fp32" in shown, shown
    assert f"int8 on {lib.resolve()}: refused until" in shown, shown


def _deviating_load(after: int, by: float = 0.08):
    from mictag.runtime.engines import open as backends

    load = backends._load
    return lambda plan, threads: Deviating(load(plan, threads), after, by) if plan.check else load(plan, threads)


def test_within_the_bound_near_a_threshold_the_reference_decides_the_tag(model, tmp_path, monkeypatch):
    """A bf16 path (faked CPU flags) whose every window is 0.01 off, toward the threshold: within
    what its checks accept, so it goes on; a window whose score lies that close to a threshold would
    flip its tag, so fp32 scores it too, and none flips."""
    from mictag import cpu
    from mictag.metadata import read_metadata
    from mictag.runtime.engines.trust import CHECK_LIMIT

    monkeypatch.setenv("MICTAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MICTAG_CPU_FLAGS", "avx2 fma avx512f avx512_bf16")  # no int8 units: auto runs bf16
    cpu.cpu_info.cache_clear()
    try:
        labels = read_metadata(model)["labels"]
        lib = _library(tmp_path / "lib")
        _scan(lib, tmp_path / "fp32.csv", model, 0, backend="ort-cpu", precision="fp32")
        monkeypatch.setattr("mictag.runtime.engines.open._load", _deviating_load(after=0, by=0.01))
        said = []
        summary = _scan(lib, tmp_path / "tags.csv", model, 0, on_message=said.append)
    finally:
        cpu.cpu_info.cache_clear()
    assert not any("failed a check" in m for m in said), said  # 0.01 (+ bf16's own) stays under CHECK_LIMIT
    assert 0.01 < CHECK_LIMIT
    worst = _assert_within_bound(read_table(tmp_path / "tags.csv"), read_table(tmp_path / "fp32.csv"), labels)
    assert worst <= 0.01 + 0.004  # the fake's 0.01 plus bf16's own
    notes = " ".join(summary.notes)
    assert "bf16 checked against fp32" in notes and "near a threshold scored on fp32" in notes, notes
    assert not notes.split("scored on fp32")[0].endswith(" 0 windows near a threshold")  # some were


# -- the parts, with fake engines and a fake clock ----------------------------------------------------
class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Engine:
    """Scores = a fixed function of the window; each window costs ``cost`` seconds of the clock."""

    def __init__(self, clock: _Clock, cost: float, offset: float = 0.0, labels: int = 4):
        self.clock, self.cost, self.offset = clock, cost, offset
        self.meta = {"labels": [f"l{i}" for i in range(labels)], "thresholds": [0.5] * labels}
        self.name, self.preferred_batch = "fake", 4
        self.plan = EnginePlan("fake", "int8", "a test", Path("/nowhere"))
        self.description = "fake int8"
        self.variant = "waveform"

    def run(self, x, valid):
        self.clock.now += self.cost * len(x)
        # far from the 0.5 threshold: no window is borderline
        return np.clip(0.1 + 0.0 * x[:, :4] + self.offset, 0, 1).astype(np.float32)


def test_checks_are_spread_over_the_scan_at_a_bounded_cost(tmp_path):
    clock = _Clock()
    fast, ref = _Engine(clock, 1.0, offset=0.001), _Engine(clock, 3.0)
    t = TrustedBackend(fast, ref, key="k", scope="s", verdicts=Verdicts(tmp_path / "v.json"), seed=1, clock=clock)
    x, valid = np.zeros((4, 8), np.float32), np.full(4, 8)
    checked_at = []
    for batch in range(500):
        done = t.submit(x, valid)
        if done.outcome.passed:
            checked_at.append(batch)
    s = t.stats
    assert s.checked == len(checked_at) and not s.switched and s.borderline == 0
    assert t.every == int(np.ceil(3.0 / CHECK_BUDGET))  # ref/fast = 3: one window in 60
    assert s.check_cost <= CHECK_BUDGET * 1.2  # the first check (window 0 of the scan) is the only extra
    gaps = np.diff(checked_at)
    assert len(checked_at) >= 500 * 4 / t.every - 2 and gaps.max() <= 2 * t.every / 4 + 1  # spread, none skipped
    assert len(set(gaps.tolist())) > 3  # at random places, not a fixed stride


def test_a_fast_path_no_faster_than_fp32_moves_to_it_after_a_last_check(tmp_path):
    clock = _Clock()
    fast, ref = _Engine(clock, 1.0), _Engine(clock, 1.0)  # as slow as the reference: nothing gained
    v = Verdicts(tmp_path / "v.json")
    t = TrustedBackend(fast, ref, key="k", scope="lib", verdicts=v, seed=0, clock=clock)
    x, valid = np.zeros((4, 8), np.float32), np.full(4, 8)
    outcomes = [t.submit(x, valid).outcome for _ in range(40)]
    assert not t.on_fast and "not faster than fp32" in t.stats.switched and not t.stats.failed
    assert all(o.passed is not False for o in outcomes)  # it left after a passing check: rows are kept
    assert "not faster than fp32" in v.refusal("k", "lib") and v.refusal("k", "other") is None


def test_the_row_gate_holds_releases_and_redoes():
    gate = RowGate()
    assert gate.batch({1, 2}, CheckOutcome(fast=True)) == []
    assert not gate.finished(1, "state 1")  # held: no check covers it yet
    assert gate.batch({3}, CheckOutcome(fast=True, passed=True)) == ["state 1"]  # covered now
    assert gate.finished(2, "state 2") and gate.finished(3, "state 3")
    gate.batch({4, 5}, CheckOutcome(fast=True))
    assert not gate.finished(4, "state 4")
    gate.batch({6}, CheckOutcome(fast=True, passed=False))  # a failed check: 4, 5, 6 are redone
    assert gate.redo == {4: "state 4"} and not gate.finished(5, "state 5") and not gate.finished(6, "state 6")
    assert set(gate.redo) == {4, 5, 6}
    gate.batch({7}, CheckOutcome(fast=False))  # scored on the reference: nothing to wait for
    assert gate.finished(7, "state 7") and not gate.must_wait()


def test_the_row_gate_with_actors_whose_batches_arrive_out_of_order():
    """A distributed scan: per actor, a pass covers that actor's batches up to it, whatever order
    they arrive in; a file waits for every actor that scored it; a late batch after a failure is redone."""
    gate = RowGate()
    gate.batch({1}, CheckOutcome(fast=True), source="a", number=2)
    gate.batch({1}, CheckOutcome(fast=True), source="b", number=1)
    assert not gate.finished(1, "state 1")
    assert gate.batch({2}, CheckOutcome(fast=True, passed=True), source="a", number=3) == []  # b still owes
    assert gate.batch(set(), CheckOutcome(fast=True, passed=True), source="b", number=2) == ["state 1"]
    gate.batch({3}, CheckOutcome(fast=True), source="a", number=6)
    assert gate.batch({4}, CheckOutcome(fast=True, passed=True), source="a", number=5) == []  # 5 does not cover 6
    assert not gate.finished(3, "state 3")
    gate.batch({5}, CheckOutcome(fast=True, passed=False, left=True), source="a", number=7)
    assert set(gate.redo) == {3} and 5 in gate.tainted
    gate.batch({6}, CheckOutcome(fast=True), source="a", number=6)  # scored before the failure, arriving late
    assert 6 in gate.tainted
    gate.batch({7}, CheckOutcome(fast=True), source="b", number=3)
    assert not gate.finished(7, "state 7")
    gate.give_up()  # the actors are gone and no check covers 7: redone
    assert 7 in gate.redo


def test_verdicts_expire_and_keep_evidence(tmp_path):
    from datetime import datetime, timedelta, timezone

    v = Verdicts(tmp_path / "v.json")
    v.record("m", "lib", windows_checked=12, max_abs_dp=0.004)
    v.record("m", "lib", windows_checked=8, max_abs_dp=0.002)
    entry = v.get("m", "lib")
    assert (entry["windows_checked"], entry["max_abs_dp"], entry["scans"], entry["refused"]) == (20, 0.004, 2, "")
    v.record("m", "lib", refused="a checked window was 0.081 from fp32")
    assert "0.081" in v.refusal("m", "lib")
    later = datetime.now(timezone.utc) + timedelta(days=31)
    assert v.refusal("m", "lib", now=later) is None  # tried again after it expires
    (tmp_path / "v.json").write_text("{not json")
    assert v.refusal("m", "lib") is None  # a damaged store is no store, never an error


# -- a kill -9 while the rescoring runs ---------------------------------------------------------------
KILLED_SCAN = r"""
import sys, time
sys.path.insert(0, {tests!r})
from trust_fakes import wrap_fast_paths
wrap_fast_paths(after=20)
from mictag.runtime.scan import pipeline
settle = pipeline.Scanner._settle
def slow_settle(self, gate, stopping):
    backend = self.backend
    ref = backend.reference
    run = ref.run
    def slow(x, valid):  # once the fast path failed, at the end of the scan: the rescoring
        if backend.stats.failed:
            print("RESCORING", file=sys.stderr, flush=True)
            time.sleep(0.5)
        return run(x, valid)
    ref.run = slow
    yield from settle(self, gate, stopping)
pipeline.Scanner._settle = slow_settle
from mictag.cli import main
main(["scan", {lib!r}, "--out", {out!r}, "--model", {model!r}, "--workers", "1"])
"""


def test_a_kill_during_the_rescoring_leaves_a_table_that_a_rerun_completes(model, tmp_path):
    from mictag.metadata import read_metadata

    labels = read_metadata(model)["labels"]
    lib = _library(tmp_path / "lib", files=10)
    out = tmp_path / "tags.csv"
    env = {**os.environ, "MICTAG_HOME": str(tmp_path / "home"), "MICTAG_CPU_FLAGS": VNNI_ONLY}
    code = KILLED_SCAN.format(tests=str(Path(__file__).parent), lib=str(lib), out=str(out), model=str(model))
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        seen.append(line)
        if "RESCORING" in line:
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(seen)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    redo_list = out.with_name(out.name + ".mictag-redo.json")
    assert redo_list.exists()  # rows the fast path wrote before it failed: named before they are replaced
    listed = set(__import__("json").loads(redo_list.read_text()))
    assert listed and listed <= set(read_table(out))
    env_cli = {**env}
    done = subprocess.run([sys.executable, "-m", "mictag", "scan", str(lib), "--out", str(out), "--model", str(model),
                           "--workers", "1"], capture_output=True, text=True, env=env_cli, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "int8 refused on this library" in done.stderr or "fp32" in done.stderr.splitlines()[-1]
    ref = subprocess.run([sys.executable, "-m", "mictag", "scan", str(lib), "--out", str(tmp_path / "fp32.csv"),
                          "--model", str(model), "--precision", "fp32", "--backend", "ort-cpu", "--workers", "1"],
                         capture_output=True, text=True, env=env_cli, timeout=300)
    assert ref.returncode == 0, ref.stderr
    got = read_table(out)
    assert len(got) == 10 and not redo_list.exists()
    _assert_within_bound(got, read_table(tmp_path / "fp32.csv"), labels)
