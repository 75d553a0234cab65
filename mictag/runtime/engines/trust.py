"""A fast path (int8, bf16) writes only what stays within a stated bound of the reference path.

**The bound, on what users see:** every probability within :data:`BOUND` (0.03) of the reference
(the same model in fp32) and no tag that differs from the reference's. How it is held:

1. **Borderline windows are scored by the reference.** A window whose fast score for some label lies
   within ``margin`` of that label's threshold is rescored on the reference, and its reference scores
   are what is written. A tag can then differ only where the fast path deviated by more than
   ``margin`` on that window. ``margin`` is twice the largest deviation seen on any checked window
   (at least :data:`MARGIN_FLOOR`, at most :data:`BOUND`; :data:`BOUND` before the first check).
2. **Sampled shadow checks across the whole scan.** One window in every ``every``, at a random place
   in each stretch of ``every`` windows (so spread over files and over time), is also scored on the
   reference. A check fails when the window deviates by more than :data:`CHECK_LIMIT`, half the bound:
   the windows between checks far outnumber those checked, and their largest deviation is larger
   than the largest checked one. When it stays within that but a tag that the fast score would have
   written (one outside the margin in force) differs from the reference's, the margin was too narrow:
   the check "misses", the stretch since the last pass is redone, the margin widens, and the fast
   path goes on (a third miss in a scan ends it). ``every`` follows the measured cost of a check so that checks cost at most :data:`CHECK_BUDGET`
   (5%) of the fast path's time.
3. **Rows wait for a check.** A check is made on the last window of the batch it falls in, so a
   pass covers every window scored up to it. A file's row is written only once a passing check
   covers the last of its windows that the fast path scored (:class:`RowGate`). At the end of the
   scan a last check runs on the latest window the fast path scored.
4. **A failed check** switches the scan to the reference for good, and every file the fast path
   scored in this scan is scored again on the reference: held rows and files in progress, and rows
   already written, whose new rows replace them (the scan names them in a redo list beside the
   output first, so a scan killed meanwhile redoes them on its rerun). The verdict is saved at once,
   so that rerun starts on the reference.
5. **Not worth it.** Borderline rescoring and checks cost reference time. When the fast path,
   with them, is no faster than :data:`WORTH` of the reference's time per window, the scan moves to
   the reference (after a last check of what the fast path scored) and says why.
6. **Verdicts per model file and library** (:class:`Verdicts`): a failure or "not worth it" makes
   later scans of that library with that model file start on the next path (bf16 after int8,
   fp32 after bf16) for :data:`VERDICT_DAYS` days; checks that pass add to the evidence shown by
   ``mictag info``. Nothing is trusted globally: every scan checks as it goes.

Why this is sound, and where it is statistical: (1) makes "no tag flips" follow from "the deviation
on that window is within the margin"; (2) tests that premise on windows drawn at random over the
whole scan, with a safety factor of two, so after k passing checks the share of windows deviating
by more than half the bound is below 3/k with 95% confidence (the rule of three); and once a check
fails, nothing the fast path wrote in the scan stays (4). What sampling cannot give is a bound on
windows that no check reaches in a scan whose every check passed.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from mictag.paths import mictag_home
from mictag.runtime.engines.base import Backend, Submitted

BOUND = 0.03  # max |probability - reference| a fast path may have on any window
# A checked window must stay within half the bound: the windows between checks are many more than
# those checked, so their largest deviation is larger than the largest checked one (about twice, for
# the light tails of bf16; int8's heavy tails fail here early).
CHECK_LIMIT = BOUND / 2
MARGIN_FLOOR = 0.002  # the least margin around a threshold inside which the reference decides
CHECK_BUDGET = 0.05  # the share of the fast path's time the sampled checks may cost
WORTH = 0.9  # the fast path must take at most this share of the reference's time per window
MAX_MISSES = 2  # a third check that finds the margin too narrow ends the fast path
MIN_EVIDENCE = 48  # fast windows scored before "worth it" is judged
MAX_EVERY = 512  # a check at least this often, however cheap the fast path is
VERDICT_DAYS = 30  # a refusal is remembered this long, then the fast path is tried again
API_SCOPE = "python-api"  # the scope of verdicts for the Python API when no library is named


@dataclass(frozen=True)
class CheckOutcome:
    """What one batch, or one final check, found. ``passed`` is None when nothing was checked."""

    fast: bool  # the fast path scored (some of) the batch's windows
    passed: bool | None = None
    checked: int = 0
    max_abs_dp: float = 0.0
    reason: str = ""  # why a check failed, or why the scan moved to the reference
    left: bool = False  # the fast path was left for good with this batch (failed, or not worth it)


class Verdicts:
    """What checks found, per fast-path model file and library, in ``$MICTAG_HOME/cache``.

    An entry: ``{"refused": reason or "", "until": iso date, "windows_checked", "max_abs_dp",
    "scans", "borderline_share", "updated"}``. Writes replace the file atomically; two scans that
    write at the same moment may lose one scan's evidence, never the file."""

    def __init__(self, path: Path | None = None):
        self.path = path or mictag_home() / "cache" / "fast-path-verdicts.json"

    def _all(self) -> dict:
        try:
            data = json.loads(self.path.read_text("utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str, scope: str) -> dict | None:
        entry = self._all().get(key, {}).get(scope)
        return entry if isinstance(entry, dict) else None

    def refusal(self, key: str, scope: str, now: datetime | None = None) -> str | None:
        """Why the fast path ``key`` is not taken for ``scope``, while its refusal lasts."""
        entry = self.get(key, scope)
        if not entry or not entry.get("refused"):
            return None
        try:
            until = datetime.fromisoformat(entry["until"])
        except (KeyError, TypeError, ValueError):
            return None
        if (now or datetime.now(timezone.utc)) >= until:
            return None
        return f"{entry['refused']} (on {entry.get('updated', '?')[:10]}; tried again after {until.date()})"

    def all_for_file(self, model: Path) -> dict[str, dict]:
        """key -> {library: entry} for every fast path of the model file as it is now."""
        prefix = verdict_key(model, "", "").rsplit("|", 1)[0] + "|"
        return {k: v for k, v in self._all().items() if k.startswith(prefix) and isinstance(v, dict)}

    def evidence(self, key: str) -> tuple[float, int] | None:
        """(the largest deviation checks found, the spacing of the latest scan's checks) for a fast
        path that passed its checks on some library, or None: where a new scan's margin starts."""
        entries = [e for e in self._all().get(key, {}).values()
                   if isinstance(e, dict) and not e.get("refused") and e.get("windows_checked")]
        if not entries:
            return None
        latest = max(entries, key=lambda e: e.get("updated", ""))
        return float(max(e.get("max_abs_dp", 0.0) for e in entries)), int(latest.get("every") or 1)

    def record(self, key: str, scope: str, *, refused: str = "", windows_checked: int = 0, max_abs_dp: float = 0.0,
               borderline_share: float | None = None, every: int | None = None) -> None:
        now = datetime.now(timezone.utc)
        data = self._all()
        entry = data.setdefault(key, {}).get(scope) or {}
        entry = {
            "refused": refused,
            "until": (now + timedelta(days=VERDICT_DAYS)).isoformat(timespec="seconds") if refused else "",
            "windows_checked": int(entry.get("windows_checked", 0)) + int(windows_checked),
            "max_abs_dp": max(float(entry.get("max_abs_dp", 0.0)), float(max_abs_dp)),
            "scans": int(entry.get("scans", 0)) + 1,
            "borderline_share": borderline_share if borderline_share is not None else entry.get("borderline_share"),
            "every": every if every is not None else entry.get("every"),
            "updated": now.isoformat(timespec="seconds"),
        }
        data[key][scope] = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1), "utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # evidence not kept: the next scan checks from scratch, as every scan does anyway


def verdict_key(model: Path, backend: str, precision: str, rest: str = "") -> str:
    """One fast path of one model file: the file as it is now (path, size, mtime) and how it runs."""
    try:
        st = model.stat()
        ident = f"{model.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        ident = str(model)
    return f"{ident}|{backend} {precision}{'+' + rest if rest else ''}"


def library_scope(library: str | os.PathLike | None) -> str:
    """The scope of a verdict: the library folder, resolved; or the Python API's."""
    return str(Path(library).resolve()) if library is not None else API_SCOPE


@dataclass
class TrustStats:
    """What the checks did in one scan (or one Tagger's life)."""

    fast_windows: int = 0
    borderline: int = 0  # windows rescored on the reference because a score sat near a threshold
    checked: int = 0
    max_abs_dp: float = 0.0
    fast_seconds: float = 0.0
    check_seconds: float = 0.0
    check_windows: int = 0
    borderline_seconds: float = 0.0
    reference_windows: int = 0  # windows scored on the reference after a switch
    switched: str = ""  # why the scan moved to the reference, if it did
    failed: bool = False  # a check failed (as opposed to "not worth it")
    misses: int = 0  # checks whose tags showed the margin too narrow (their stretch was redone)

    @property
    def check_cost(self) -> float:
        """The checks' time as a share of the fast path's."""
        return self.check_seconds / self.fast_seconds if self.fast_seconds > 0 else 0.0


class _LastWindow(NamedTuple):
    """The last window the fast path scored and no check has covered yet: what the final check
    scores on the reference."""

    x: np.ndarray
    valid: int
    fast: np.ndarray  # its probabilities on the fast path


class TrustedBackend(Backend):
    """Runs a fast path with borderline rescoring and sampled checks against ``reference``.

    ``reference`` is a Backend or a callable that loads one; a callable is run at once in a
    background thread, so its load overlaps the scan's start, and is waited for at the first check.
    Scores come back synchronously (``in_flight`` 1): each batch's :class:`CheckOutcome` is on the
    Submitted it returns (``outcome``)."""

    in_flight = 1

    def __init__(self, fast, reference, thresholds: np.ndarray | None = None, *, key: str = "",
                 scope: str = API_SCOPE, verdicts: Verdicts | None = None, seed: int | None = None,
                 on_message: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self.fast = fast
        self.meta, self.name, self.preferred_batch = fast.meta, fast.name, fast.preferred_batch
        self.plan = fast.plan
        self.thresholds = np.asarray(thresholds if thresholds is not None else fast.meta["thresholds"], np.float64)
        self.key, self.scope = key, scope
        self.verdicts = verdicts or Verdicts()
        self.say = on_message or (lambda m: None)
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.stats = TrustStats()
        self.on_fast = True
        # the latest fast window no check covers yet: (window, valid, the fast path's scores for it)
        self.last: _LastWindow | None = None
        self.seen_dp = 0.0  # the largest deviation seen on a checked window
        self._saved_checks = 0  # checks already added to the verdicts
        self.every = 1  # no evidence yet: the first window is checked (it calibrates the margin)
        prior = self.verdicts.evidence(key) if key else None
        if prior is not None:  # earlier scans of this fast path (any library) set the margin and spacing
            self.seen_dp, self.every = prior
        # Checks fall one in each stretch of ``every`` windows, at a random place in it.
        self.block_end = self.every
        self.next_check = int(self.rng.integers(0, self.every))  # index (among fast windows) of the next check
        self._reference = None
        self._loading: threading.Thread | None = None
        self._load_error: BaseException | None = None
        if callable(reference) and not hasattr(reference, "run"):
            self._loading = threading.Thread(target=self._load, args=(reference,), daemon=True,
                                             name="mictag-reference-load")
            self._loading.start()
        else:
            self._reference = reference

    # -- the reference ----------------------------------------------------------------------
    def _load(self, loader) -> None:
        try:
            self._reference = loader()
        except BaseException as exc:  # reported where the reference is first needed
            self._load_error = exc

    @property
    def reference(self):
        """The reference backend (waits for its load, and re-raises what stopped it)."""
        if self._loading is not None:
            self._loading.join()
            self._loading = None
        if self._load_error is not None:
            raise self._load_error
        if self.embeds and not self._reference.embeds:
            self._reference.want_embeddings()
        return self._reference

    def want_embeddings(self) -> None:
        """The fast path gives the embeddings of the windows it scores; the reference those of the
        windows it scores (checked and borderline ones, and all after a failed check)."""
        self.fast.want_embeddings()
        self.embeds = True

    def _scored(self, backend: Backend, x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``backend``'s probabilities for ``x`` (a copy of our own), and its embeddings where asked."""
        if self.embeds:
            probs, embeddings = backend.run_embedded(x, valid)
            return np.array(probs, np.float32), np.array(embeddings, np.float32)
        return np.array(backend.run(x, valid), np.float32), None

    def use_thresholds(self, thresholds: np.ndarray) -> None:
        """The thresholds tags are cut at (the scan's, which ``--threshold`` may override)."""
        self.thresholds = np.asarray(thresholds, np.float64)

    @property
    def variant(self) -> str:
        return self.fast.variant

    @property
    def margin(self) -> float:
        if self.stats.checked == 0 and self.seen_dp == 0.0:
            return BOUND
        return float(min(BOUND, max(MARGIN_FLOOR, 2.0 * self.seen_dp)))

    @property
    def description(self) -> str:
        """What scored the windows, in a few words (the summary's ``on ...``; details in :meth:`summary`)."""
        if self.stats.switched:
            return f"{self._ref_name()}, after {self.fast.plan.backend} {self._fast_precision()} was left"
        return f"{self.fast.description}, checked against fp32"

    def _fast_precision(self) -> str:
        plan = self.fast.plan
        return f"{plan.precision}{'+' + plan.rest if plan.rest else ''}"

    def _ref_name(self) -> str:
        ref = self._reference
        return f"{ref.plan.backend} {ref.plan.precision}" if ref is not None and ref.plan is not None else "fp32"

    # -- scoring ----------------------------------------------------------------------------
    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return self.submit(x, valid).result()

    def submit(self, x: np.ndarray, valid: np.ndarray) -> Submitted:
        valid = np.asarray(valid)
        if not self.on_fast:
            probs, embeddings = self._scored(self.reference, x, valid)
            self.stats.reference_windows += len(x)
            return Submitted(len(x), value=probs, outcome=CheckOutcome(fast=False), embeddings=embeddings)
        probs, outcome, embeddings = self._score_fast(x, valid)
        return Submitted(len(x), value=probs, outcome=outcome, embeddings=embeddings)

    def _on_reference(self, x: np.ndarray, valid: np.ndarray, rows: list[int],
                      embeddings: np.ndarray | None) -> np.ndarray:
        """The reference's probabilities for ``rows`` of the batch; their embeddings, where asked,
        replace the fast path's in ``embeddings``."""
        exact, exact_embeddings = self._scored(self.reference, x[rows], valid[rows])
        if embeddings is not None:
            embeddings[rows] = exact_embeddings
        return exact

    def _score_fast(self, x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, CheckOutcome, np.ndarray | None]:
        s = self.stats
        t0 = self.clock()
        probs, embeddings = self._scored(self.fast, x, valid)
        s.fast_seconds += self.clock() - t0
        n = len(x)
        first = s.fast_windows
        s.fast_windows += n
        # A check due in this batch checks its LAST window: a pass then covers every window scored
        # so far, so a deviation that sets in later is caught by a later check, never passed over.
        rows = [n - 1] if self.next_check < first + n else []
        verdict, passed, worst, reason, exact_rows = "", None, 0.0, "", {}
        if rows:
            t0 = self.clock()
            exact = self._on_reference(x, valid, rows, embeddings)
            s.check_seconds += self.clock() - t0
            s.check_windows += len(rows)
            verdict, worst, reason = self._judge(probs[rows], exact)
            passed = verdict == "pass"
            exact_rows.update(zip(rows, exact))
            self._reschedule(first + n)
        # borderline windows: the reference decides their tags (checked rows already have its scores)
        near = [int(r) for r in np.flatnonzero((np.abs(probs - self.thresholds) <= self.margin).any(axis=1))
                if int(r) not in exact_rows]
        if near:
            t0 = self.clock()
            exact = self._on_reference(x, valid, near, embeddings)
            s.borderline_seconds += self.clock() - t0
            s.borderline += len(near)
            exact_rows.update(zip(near, exact))
        for r, e in exact_rows.items():
            probs[r] = e
        if verdict == "fail":
            self._fail(reason)
        if passed is not None:
            self.last = None  # covered (pass), or to be redone (miss, fail)
            outcome = CheckOutcome(fast=True, passed=passed, checked=len(rows), max_abs_dp=worst, reason=reason,
                                   left=verdict == "fail")
        else:
            fast_rows = [r for r in range(n) if r not in exact_rows]
            if fast_rows:
                r = fast_rows[-1]
                self.last = _LastWindow(np.array(x[r], copy=True), int(valid[r]), probs[r].copy())
            outcome = CheckOutcome(fast=True)
        if self.on_fast and passed is not False and self._not_worth_it():
            return probs, self._leave(outcome), embeddings
        return probs, outcome, embeddings

    def _judge(self, fast: np.ndarray, exact: np.ndarray) -> tuple[str, float, str]:
        """("pass" | "miss" | "fail", deviation, why) for checked windows. "fail": a deviation above
        CHECK_LIMIT. "miss": within it, but a tag outside the margin in force (one the fast path alone
        would have written) differs from the reference's: the margin was too narrow, so what was
        scored since the last passing check is redone and the margin widens to twice this deviation."""
        s = self.stats
        margin = self.margin  # the one the unchecked windows were scored with
        dp = np.abs(fast - exact)
        worst = float(dp.max()) if dp.size else 0.0
        s.checked += len(fast)
        s.max_abs_dp = max(s.max_abs_dp, worst)
        self.seen_dp = max(self.seen_dp, worst)
        kept = np.abs(fast - self.thresholds) > margin
        flips = int(((fast >= self.thresholds) != (exact >= self.thresholds))[kept].sum())
        if worst > CHECK_LIMIT:
            return "fail", worst, (f"a checked window was {worst:.3f} from fp32 (more than {CHECK_LIMIT}, half the "
                                   f"bound of {BOUND}: the unchecked windows around it may be twice as far)")
        if flips:
            s.misses += 1
            why = (f"a checked window's tag differed from fp32's outside the margin {margin:.3f} ({flips} "
                   f"label{'s' if flips > 1 else ''}, deviation {worst:.3f})")
            if s.misses > MAX_MISSES:
                return "fail", worst, f"{why}, for the {s.misses}th time"
            return "miss", worst, why
        return "pass", worst, ""

    def _reschedule(self, scored: int) -> None:
        """The next check: ``every`` from the measured cost of a check against the fast path's time
        per window; the check at a random place in the next stretch of ``every`` windows (the one
        after the stretch this check fell in, or after the ``scored`` windows, if further)."""
        s = self.stats
        if s.check_windows and s.fast_windows and s.fast_seconds > 0:
            ratio = (s.check_seconds / s.check_windows) / (s.fast_seconds / s.fast_windows)
            self.every = int(min(MAX_EVERY, max(1, math.ceil(ratio / CHECK_BUDGET))))
        start = max(self.block_end, scored)
        self.block_end = start + self.every
        self.next_check = start + int(self.rng.integers(0, self.every))

    def _not_worth_it(self) -> bool:
        s = self.stats
        if s.fast_windows < MIN_EVIDENCE or not s.check_windows:
            return False
        ref_per_window = s.check_seconds / s.check_windows
        if s.borderline:
            ref_per_window = min(ref_per_window, s.borderline_seconds / s.borderline)
        spent = (s.fast_seconds + s.borderline_seconds + s.check_seconds) / s.fast_windows
        return spent > WORTH * ref_per_window

    # -- leaving the fast path --------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        s = self.stats
        s.failed, s.switched = True, f"the fast path failed a check: {reason}"
        self.on_fast = False
        self.last = None
        self.verdicts.record(self.key, self.scope, refused=reason, windows_checked=s.checked,
                             max_abs_dp=s.max_abs_dp, borderline_share=self._borderline_share())
        self.say(f"{self.fast.plan.backend} {self._fast_precision()} failed a check ({reason}): the rest runs on "
                 f"{self._ref_name()}, and every file it scored in this scan is scored again")

    def _leave(self, outcome: CheckOutcome) -> CheckOutcome:
        """Move to the reference because the fast path is not faster here, after one last check of
        what it scored (so its rows can be written, or redone if that check fails)."""
        s = self.stats
        last = self.final_check()
        share = self._borderline_share()
        why = (f"not faster than fp32 here: {100 * share:.0f}% of windows had a score within {self.margin:.3f} of a "
               f"threshold and were scored on fp32 too")
        if last is not None and last.passed is False:
            return CheckOutcome(fast=True, passed=False, checked=outcome.checked + last.checked,
                                max_abs_dp=max(outcome.max_abs_dp, last.max_abs_dp), reason=last.reason,
                                left=last.left)
        s.switched = why
        self.on_fast = False
        self.verdicts.record(self.key, self.scope, refused=why, windows_checked=s.checked, max_abs_dp=s.max_abs_dp,
                             borderline_share=share)
        self.say(f"{self.fast.description} is {why}: the rest runs on {self._ref_name()}")
        return CheckOutcome(fast=True, passed=True, checked=outcome.checked + (last.checked if last else 0),
                            max_abs_dp=max(outcome.max_abs_dp, last.max_abs_dp if last else 0.0), reason=why, left=True)

    def _borderline_share(self) -> float:
        s = self.stats
        return s.borderline / s.fast_windows if s.fast_windows else 0.0

    def final_check(self) -> CheckOutcome | None:
        """Check the latest window the fast path scored that no check covers yet (None when there
        is none: everything it scored is covered already, or was scored on fp32)."""
        if not self.on_fast or self.last is None:
            return None
        s = self.stats
        x, valid, fast = self.last.x[None], np.asarray([self.last.valid]), self.last.fast[None]
        t0 = self.clock()
        exact = np.asarray(self.reference.run(x, valid), np.float32)
        s.check_seconds += self.clock() - t0
        s.check_windows += 1
        verdict, worst, reason = self._judge(fast, exact)
        self.last = None
        if verdict == "fail":
            self._fail(reason)
        return CheckOutcome(fast=True, passed=verdict == "pass", checked=1, max_abs_dp=worst, reason=reason,
                            left=verdict == "fail")

    def finish(self) -> None:
        """Save what the checks found since the last save (a refusal is saved when it happens)."""
        s = self.stats
        if s.switched or s.checked <= self._saved_checks:
            return
        self.verdicts.record(self.key, self.scope, windows_checked=s.checked - self._saved_checks,
                             max_abs_dp=s.max_abs_dp, borderline_share=self._borderline_share(), every=self.every)
        self._saved_checks = s.checked

    def summary(self) -> str:
        """One line on what the checks did, for the scan's summary."""
        s = self.stats
        if not s.fast_windows:
            return ""
        line = (f"{self.fast.plan.backend} {self._fast_precision()} checked against fp32 on {s.checked} of "
                f"{s.fast_windows} windows (max |dp| {s.max_abs_dp:.3f}; the checks took "
                f"{100 * s.check_cost:.1f}% of its time); {s.borderline} window{'s' if s.borderline != 1 else ''} "
                f"near a threshold scored on fp32")
        if s.switched:
            line += f"; then {self._ref_name()}: {s.switched}"
        return line


class RowGate:
    """Holds each finished file's row until a passing check covers every window the fast path
    scored for it; after a failed check, the files it could have touched are redone.

    The scanner tells it, per scored batch, which files had windows in the batch and the batch's
    :class:`CheckOutcome`; it answers which finished files may be written now. A check covers the
    windows its checked backend (``source``) scored up to it, in the order it scored them (batch
    ``number``; counted here when not given). A distributed scan has one source per model actor,
    whose batches may arrive out of order: a file waits until every actor that scored it on a fast
    path has passed a check at a later batch, and after a failure, what cannot be shown to be
    covered is redone."""

    def __init__(self):
        self.last_fast: dict[object, dict[int, int]] = {}  # source -> fid -> its latest fast batch there
        self.verified: dict[object, int] = {}  # source -> the latest batch a passing check covers
        self.failed: set[object] = set()  # sources whose fast path failed: they pass nothing any more
        self.fast_files: set[int] = set()  # files with any window scored by a fast path
        self.tainted: set[int] = set()  # files with a window in a stretch that failed its check
        self.held: dict[int, object] = {}  # fid -> the finished file's state, waiting for a check
        self.redo: dict[int, object] = {}  # fid -> the file's state: scored again on the reference
        self.fast_failed = False  # a fast path failed: every file it scored in this scan is redone
        self._count = 0

    def batch(self, fids: set[int], outcome: CheckOutcome | None, source: object = None,
              number: int | None = None) -> list[object]:
        """Record a scored batch; the held states its check releases."""
        if outcome is None:
            return []
        if number is None:
            self._count += 1
            number = self._count
        if outcome.fast:
            self.fast_files |= fids
            if source in self.failed and number > self.verified.get(source, 0):
                self._taint(fids)  # scored in the stretch that failed, arriving late
            else:
                latest = self.last_fast.setdefault(source, {})
                for fid in fids:
                    latest[fid] = max(latest.get(fid, 0), number)
        return self.outcome(outcome, source, number)

    def outcome(self, outcome: CheckOutcome | None, source: object = None, number: int | None = None) -> list[object]:
        """A check's outcome at batch ``number`` of ``source`` (None: everything it scored so far)."""
        if outcome is None or outcome.passed is None:
            return []
        latest = self.last_fast.get(source, {})
        if number is None:
            number = max(latest.values(), default=0)
        if outcome.passed and source not in self.failed:
            self.verified[source] = max(self.verified.get(source, 0), number)
            self._forget_covered(source)
            if outcome.left:
                self.failed.add(source)
            return [self.held.pop(fid) for fid in list(self.held) if not self._waiting(fid)]
        # failed (or missed): everything not covered by an earlier pass is redone
        self._taint({fid for fid, n in latest.items() if n > self.verified.get(source, 0)})
        self.last_fast.pop(source, None)
        if outcome.left:
            self.failed.add(source)
            self.fast_failed = True
            self._taint(set(self.held) & self.fast_files)
        return []

    def _forget_covered(self, source: object) -> None:
        v = self.verified.get(source, 0)
        latest = self.last_fast.get(source, {})
        for fid in [f for f, n in latest.items() if n <= v]:
            del latest[fid]

    def _taint(self, fids: set[int]) -> None:
        self.tainted |= fids
        for fid in fids & self.held.keys():
            self.redo[fid] = self.held.pop(fid)

    def _waiting(self, fid: int) -> bool:
        return any(fid in latest for latest in self.last_fast.values())

    def finished(self, fid: int, state, near_threshold: bool = False) -> bool:
        """True if the finished file's row may be written now; else it is held or redone
        (``near_threshold``: its aggregate sits where the fast path's deviation could flip a tag)."""
        if fid in self.tainted or near_threshold or (self.fast_failed and fid in self.fast_files):
            self.redo[fid] = state
            return False
        if self._waiting(fid):
            self.held[fid] = state
            return False
        return True

    @property
    def pending(self) -> bool:
        """Whether any fast window still waits for a check."""
        return any(self.last_fast.values())

    def must_wait(self) -> bool:
        return bool(self.held)

    def give_up(self) -> None:
        """No check can come any more (a distributed scan's actors are gone): what is held is redone."""
        self.redo.update(self.held)
        self.held.clear()
        self.last_fast.clear()
