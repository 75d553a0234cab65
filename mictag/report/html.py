"""The report as one self-contained HTML file: inline CSS, inline JS, the data as JSON.

Nothing is fetched when it is viewed: no CDN, fonts or images; the charts are SVG and canvas drawn
by the small script below from the embedded aggregates. The summary is plain HTML written here,
so it reads before (and without) any script. Every string from the scan reaches the page either
through :func:`html.escape` (the summary) or as JSON that the script puts into the page with
``textContent``/``setAttribute`` only, never as markup; the JSON itself escapes ``<``, ``>`` and
``&`` so that a path such as ``</script>.wav`` cannot end its block.
"""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path

from mictag import __version__
from mictag.report.data import ReportError

PROBLEM_ROWS = 500  # rows the problem table shows at once; the filter (and the CSV) reach the rest


def _json_for_script(data: dict) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Inside <script>, "</script" ends the block whatever the type; escaped, the JSON is unchanged.
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _count(n: int) -> str:
    return f"{n:,}"


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return ""  # not reached


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 360 else f"{seconds / 60:,.1f} min"


def _tile(value: str, what: str) -> str:
    return f'<div class="tile"><b>{escape(value)}</b><span>{escape(what)}</span></div>'


def _summary(d: dict) -> str:
    s, m, tl = d["summary"], d["model"], d["timelines"]
    files = s["files"]
    tiles = [_tile(_count(files), "files"), _tile(_hours(s["seconds"]), "of audio"),
             _tile(_size(s["bytes"]), "on disk"),
             _tile(_count(s["windows"]), "windows scored"),
             _tile(_count(s["scored"] - s["untagged"]), "files with a tag"),
             _tile(f"{s['mean_tags']:.2f}", "tags per scored file"), _tile(_count(len(d["labels"])), "labels")]
    statuses = {**s["statuses"], **s["other_statuses"]}
    bar = "".join(f'<div class="st-{escape(k) if k in s["statuses"] else "other"}" style="flex-grow:{n}" '
                  f'title="{escape(k)}: {_count(n)}"></div>' for k, n in statuses.items() if n)
    legend = []
    for k, n in statuses.items():
        cls = escape(k) if k in s["statuses"] else "other"
        text = f'<span class="dot st-{cls}"></span>{escape(k)} <b>{_count(n)}</b> <i>{_share(n, files)}</i>'
        if n and k != "ok" and d["problems"]["name"]:
            text = f'<a href="#problems" data-open="problems">{text}</a>'
        legend.append(f"<li>{text}</li>")
    facts = [("model", _model_line(m)), ("thresholds", _threshold_line(d)), ("timelines", _timeline_line(tl))]
    notes = []
    if s["malformed"]:
        notes.append(f"{_count(s['malformed'])} line(s) of TAGS skipped: torn or of the wrong shape "
                     "(a scan still running, or killed, leaves a torn last line)")
    if s["unknown_tags"]:
        notes.append(f"{_count(s['unknown_tags'])} tag(s) name no label column and are not counted")
    if m.get("labels_differ"):
        notes.append("the sidecar's labels differ from TAGS' columns: it was written by another scan")
    if notes:
        facts.append(("notes", "; ".join(notes)))
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    return (f'<section id="summary"><div class="tiles">{"".join(tiles)}</div>'
            f'<div class="statusbar" aria-label="files by status">{bar}</div>'
            f'<ul class="legend">{"".join(legend)}</ul><dl class="facts">{rows}</dl></section>')


def _model_line(m: dict) -> str:
    if not m["known"]:
        return "unknown: TAGS has no sidecar (TAGS.mictag.json) beside it"
    hop = f", hop {m['hop_frames']} frames" if m.get("hop_frames") is not None else ""
    name = f"{m['name']}, " if m.get("name") else ""
    return f"{name}sha256 {m['sha256'][:16]}..., aggregate {m.get('aggregate')}{hop}"


def _threshold_line(d: dict) -> str:
    h = d["hist"]
    if h["threshold_kind"] == "option":
        return f"{h['threshold'][0]:g} for every label (the scan's --threshold)"
    if h["threshold_kind"] == "model":
        return "the model's own, one per label (dashed in the histograms)"
    found = sum(t is not None for t in h["threshold"])
    return (f"the model's own, one per label (the sidecar does not record them): the histograms mark each "
            f"label's lowest tagged score ({found} of {len(h['threshold'])} labels separate cleanly)")


def _timeline_line(tl: dict) -> str:
    if not tl["given"]:
        return "none: give the scan --segments seg.jsonl, then `mictag report TAGS --segments seg.jsonl`"
    if not tl["files"] and tl["limit"] == 0:
        return f"none embedded (--timelines 0); {Path(tl['source']).name} holds {_count(tl['total'])} timeline(s)"
    if not tl["files"]:
        return f"the segments file holds no timeline ({_count(tl['skipped'])} line(s) unreadable)"
    if tl["sampled"] + tl["skipped"] >= tl["total"]:
        how = f"all {_count(tl['sampled'])} files of {Path(tl['source']).name}"
    else:
        how = (f"{_count(tl['sampled'])} of {_count(tl['total'])} files of {Path(tl['source']).name}, drawn uniformly "
               f"at random (reservoir sampling, seed {tl['seed']}; --timelines and --seed choose others)")
    extra = []
    if tl["pooled"]:
        extra.append(f"{_count(tl['pooled'])} long file(s) max-pooled into at most {tl['column_cap']} time columns")
    if tl["skipped"]:
        extra.append(f"{_count(tl['skipped'])} sampled line(s) unreadable and left out")
    if tl["unmatched"]:
        extra.append(f"{_count(tl['unmatched'])} sampled file(s) have no row in TAGS")
    return how + "; scores in 1/255 steps" + "".join(f"; {e}" for e in extra)


def _similar_line(sim: dict) -> str:
    if not sim["given"]:
        return "Not given: pass the scan's --embeddings table to `mictag report --embeddings`."
    return (f"The {sim['k']} nearest of {sim['sampled']:,} files drawn at random (of {sim['total']:,} in "
            f"{sim['source']}), by cosine similarity of their embeddings ({sim['index']} index).")


def _section(key: str, title: str, note: str, content: str, is_open: bool = True) -> str:
    """One <details> block: its title always in view, its content one click away."""
    return (f'<details{" open" if is_open else ""} id="{key}"><summary>{title} <span class="muted">{note}</span>'
            f"</summary>\n{content}\n</details>")


def render(data: dict) -> str:
    """The whole report page for :func:`mictag.report.data.build`'s ``data``."""
    p, tl = data["problems"], data["timelines"]
    n_problems = len(p["name"])
    title = escape(data["title"])
    problems = ('<p class="muted">No file failed, was empty or decoded only in part.</p>' if not n_problems else
                '<div class="tools"><input id="pfilter" type="search" placeholder="filter by path, status or message" '
                'aria-label="filter problems"> <span id="pcount" class="muted"></span> '
                '<button id="pall" type="button" hidden>Show them all</button> '
                '<button id="pcsv" type="button">Download the matching rows as CSV</button></div>'
                '<table id="ptable"><thead><tr><th>status</th><th>path</th><th>problem</th></tr></thead>'
                '<tbody></tbody></table>')
    timelines = f'<p class="muted">{escape(_timeline_line(tl))}</p>'
    if tl["given"] and tl["files"]:
        timelines += ('<div class="tl"><div class="tl-list"><input id="tfilter" type="search" placeholder="find a file"'
                      ' aria-label="find a file"><select id="tselect" size="18" aria-label="files"></select>'
                      '<span id="tcount" class="muted"></span></div><div class="tl-view"><div id="tinfo"></div>'
                      '<div class="tl-plot"><div id="tlabels"></div><canvas id="tcanvas"></canvas></div>'
                      '<div class="tl-axis"><div id="taxis"></div></div><div id="thover" class="muted">&nbsp;</div>'
                      '</div></div>')
    sim = data.get("similar") or {"given": False, "files": []}
    similar = f'<p class="muted">{escape(_similar_line(sim))}</p>'
    if sim["given"] and sim["files"]:
        similar += ('<div class="tl"><div class="tl-list"><input id="sfilter" type="search" placeholder="find a file"'
                    ' aria-label="find a file"><select id="sselect" size="14" aria-label="files"></select>'
                    '<span id="scount" class="muted"></span></div><div class="tl-view"><div id="sinfo"></div>'
                    '<table id="stable"><thead><tr><th>#</th><th>similarity</th><th>path</th><th>tags</th></tr>'
                    '</thead><tbody></tbody></table></div></div>')
    instruments = ('<div class="grid2"><figure><figcaption>Files tagged with each instrument (share of scored files)'
                   '</figcaption><svg id="bars" role="img" aria-label="files per instrument"></svg></figure>'
                   "<figure><figcaption>Co-occurrence: the row instrument's files that are also tagged with the "
                   'column\'s (%)</figcaption><svg id="cooc" role="img" aria-label="co-occurrence matrix"></svg>'
                   '<div class="ramp"><span>0%</span><i></i><span>100%</span></div></figure></div>')
    scores = ('<div class="tools"><label><input id="loghist" type="checkbox" checked> log scale</label> '
              '<span class="muted">dashed: the tag threshold</span></div><div id="hists" class="smallmult"></div>')
    body = "\n".join([
        f'<header><h1>mictag report <span class="muted">{title}</span></h1><p class="muted">'
        f'{escape(data["source"])} &middot; generated {escape(data["generated"])} by mictag {escape(__version__)}'
        "</p></header>",
        _summary(data),
        _section("instruments", "Instruments", "files per instrument, and which are tagged together", instruments),
        _section("scores", "Score distributions",
                 f"per instrument, {data['hist']['bins']} bins over 0-1, tagged files in colour", scores),
        _section("problems", f"Problems ({n_problems:,})", "every file that failed, was empty, decoded only in part or has a note",
                 problems, is_open=False),
        _section("timelines", "Timelines", "per-window scores of one file: instruments &times; time", timelines),
        _section("similar", "Similar files", "the files that sound most like a chosen one (by embedding)", similar,
                 is_open=bool(sim["given"])),
        '<footer class="muted">One file, nothing fetched: the charts are drawn by the script in this page from the '
        f'data embedded in it. Built in {data["build_seconds"]:.1f} s.</footer>',
    ])
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>mictag report: {title}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
            f'<script type="application/json" id="mictag-data">{_json_for_script(data)}</script>\n'
            f"<script>{_JS.replace('__PROBLEM_ROWS__', str(PROBLEM_ROWS))}</script>\n</body></html>\n")


def write(data: dict, out: str | os.PathLike) -> int:
    """Write the report to ``out`` atomically (a reader never sees half a page); its size in bytes."""
    out = Path(out)
    page = render(data).encode("utf-8")
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(page)
        os.replace(tmp, out)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise ReportError(f"cannot write {out}: {exc.strerror or exc}; write --out somewhere writable") from None
    return len(page)


_CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#fff;--card:#f8f9fb;--accent:#2563eb;
--ok:#16a34a;--partial:#d97706;--empty:#94a3b8;--error:#dc2626;--other:#7c3aed}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1240px;padding:16px 20px 40px;color:var(--fg);background:var(--bg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
h1{font-size:22px;margin:0 0 2px}
.muted{color:var(--muted);font-weight:normal}
header p{margin:0 0 12px;font-size:12px;overflow-wrap:anywhere}
#summary{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin-bottom:14px}
.tiles{display:flex;flex-wrap:wrap;gap:10px 28px;margin-bottom:12px}
.tile b{display:block;font-size:22px;font-variant-numeric:tabular-nums}
.tile span{color:var(--muted);font-size:12px}
.statusbar{display:flex;height:12px;border-radius:6px;overflow:hidden;background:var(--line)}
.statusbar div{min-width:2px}
.st-ok{background:var(--ok)}.st-partial{background:var(--partial)}.st-empty{background:var(--empty)}
.st-error{background:var(--error)}.st-other{background:var(--other)}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:4px 22px;padding:0;margin:8px 0 10px}
.legend a{color:inherit}
.legend i{color:var(--muted);font-style:normal}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:5px;vertical-align:-1px}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0;font-size:13px}
.facts dt{color:var(--muted)}.facts dd{margin:0;overflow-wrap:anywhere}
details{border:1px solid var(--line);border-radius:8px;margin:0 0 14px;padding:0 16px}
details[open]{padding-bottom:14px}
summary{cursor:pointer;font-weight:600;font-size:16px;padding:10px 0}
summary .muted{font-size:13px;margin-left:6px}
figure{margin:0}
figcaption{font-size:12px;color:var(--muted);margin:0 0 6px}
.grid2{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:24px}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
svg{max-width:100%;height:auto;overflow:visible}
svg text{font-size:11px;fill:var(--fg)}
svg .num{fill:var(--muted)}
#bars rect{fill:var(--accent)}
.ramp{display:flex;align-items:center;gap:6px;font-size:11px;color:var(--muted);margin-top:4px}
.ramp i{display:block;width:160px;height:10px;border-radius:2px;border:1px solid var(--line)}
.tools{margin:0 0 10px;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
input[type=search]{font:inherit;padding:5px 8px;border:1px solid #cbd2dc;border-radius:6px;min-width:280px}
button{font:inherit;font-size:12px;padding:4px 10px;border:1px solid #cbd2dc;border-radius:6px;background:#fff;
cursor:pointer}
.smallmult{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px 16px}
.hist figcaption{color:var(--fg);font-size:12px}
.hist figcaption span{color:var(--muted)}
.hist .tg{fill:var(--accent)}.hist .ut{fill:#c3cad5}
.hist .thr{stroke:var(--error);stroke-dasharray:3 2;stroke-width:1.2}
#ptable{border-collapse:collapse;width:100%;font-size:12.5px;table-layout:fixed}
#ptable th{text-align:left;border-bottom:2px solid var(--line);padding:4px 6px}
#ptable th:first-child{width:70px}#ptable th:nth-child(2){width:46%}
#ptable td{border-bottom:1px solid var(--line);padding:3px 6px;vertical-align:top;overflow-wrap:anywhere}
.tl{display:grid;grid-template-columns:300px minmax(0,1fr);gap:18px}
.tl-list{display:flex;flex-direction:column;gap:6px}
.tl-list input{min-width:0}
#tselect{font:inherit;font-size:12px;width:100%;border:1px solid #cbd2dc;border-radius:6px}
#tinfo{font-size:12.5px;margin-bottom:6px;overflow-wrap:anywhere}
.tl-plot{display:flex}
#tlabels{width:130px;flex:none;font-size:11px;text-align:right;padding-right:6px}
#tlabels div{height:14px;line-height:14px;white-space:nowrap;overflow:hidden}
#tlabels .on{font-weight:700}
#tcanvas{flex:1;min-width:0;width:100%;image-rendering:pixelated;border:1px solid var(--line);cursor:crosshair}
.tl-axis{margin-left:130px;position:relative;height:18px}
#taxis{position:relative;height:18px;font-size:10.5px;color:var(--muted)}
#taxis span{position:absolute;top:2px;transform:translateX(-50%);white-space:nowrap}
#taxis span::before{content:"";position:absolute;left:50%;top:-3px;height:3px;border-left:1px solid var(--muted)}
#thover{font-size:12px;min-height:18px}
footer{font-size:12px;margin-top:20px}
"""

_JS = r"""
(function () {
"use strict";
const D = JSON.parse(document.getElementById("mictag-data").textContent);
const NS = "http://www.w3.org/2000/svg";
function h(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
function s(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}
const fmt = n => Number(n).toLocaleString("en-US");
const pct = (a, b) => b ? (100 * a / b).toFixed(1) + "%" : "-";
const maxOf = a => a.reduce((m, v) => v > m ? v : m, 0);
// A sequential ramp (light = 0, dark blue = 1), shared by the co-occurrence matrix and the timelines.
const RAMP = [[247,251,255], [222,235,247], [198,219,239], [158,202,225], [107,174,214], [66,146,198],
  [33,113,181], [8,81,156], [8,48,107]];
function ramp(t) {
  t = Math.max(0, Math.min(1, t));
  const x = t * (RAMP.length - 1), i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
  const a = RAMP[i], b = RAMP[i + 1];
  return "rgb(" + [0, 1, 2].map(k => Math.round(a[k] + f * (b[k] - a[k]))).join(",") + ")";
}
function clock(sec) {
  const m = Math.floor(sec / 60), r = sec - 60 * m;
  const two = v => String(v).padStart(2, "0");
  if (m >= 60) return Math.floor(m / 60) + ":" + two(m % 60) + ":" + two(Math.floor(r));
  return m + ":" + (r < 10 ? "0" : "") + r.toFixed(sec < 60 ? 1 : 0);
}
// Each section draws on its own: one failing leaves the others (and says so in the console).
function guarded(id, draw) {
  try { draw(); } catch (err) {
    console.error("mictag report: " + id + ": " + err);
    const box = document.getElementById(id);
    if (box) box.appendChild(h("p", {class: "muted"}, "This chart could not be drawn: " + err));
  }
}
const L = D.labels.length;

function drawBars() {
  const svg = document.getElementById("bars");
  const counts = D.files_per_label, scored = D.summary.scored;
  const order = D.labels.map((_, i) => i).sort((a, b) => counts[b] - counts[a] || a - b);
  const rowH = 22, left = 130, right = 120, W = 560, H = Math.max(1, L) * rowH + 6, max = Math.max(1, maxOf(counts));
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  order.forEach((j, r) => {
    const y = 3 + r * rowH, n = counts[j], w = (W - left - right) * n / max;
    const g = s("g");
    g.appendChild(s("title", {}, D.labels[j] + ": " + fmt(n) + " of " + fmt(scored) + " scored files"));
    g.appendChild(s("text", {x: left - 8, y: y + 15, "text-anchor": "end"}, D.labels[j]));
    g.appendChild(s("rect", {x: left, y: y + 3, width: n ? Math.max(1, w) : 0, height: rowH - 6, rx: 2}));
    g.appendChild(s("text", {x: left + w + 6, y: y + 15, class: "num"}, fmt(n) + "  " + pct(n, scored)));
    svg.appendChild(g);
  });
}

function drawCooc() {
  const svg = document.getElementById("cooc"), C = D.cooccurrence;
  const cell = 24, left = 124, top = 96, W = left + L * cell + 2, H = top + L * cell + 2;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  D.labels.forEach((lab, i) => {
    svg.appendChild(s("text", {x: left - 6, y: top + i * cell + cell * 0.66, "text-anchor": "end"}, lab));
    const x = left + i * cell + cell * 0.6, y = top - 6;
    svg.appendChild(s("text", {x: x, y: y, transform: "rotate(-55 " + x + " " + y + ")"}, lab));
  });
  for (let i = 0; i < L; i++) {
    const own = C[i][i];
    for (let j = 0; j < L; j++) {
      const v = own ? C[i][j] / own : 0, x = left + j * cell, y = top + i * cell;
      const g = s("g");
      g.appendChild(s("title", {}, i === j
        ? D.labels[i] + ": " + fmt(own) + " files"
        : D.labels[i] + " & " + D.labels[j] + ": " + fmt(C[i][j]) + " files (" + pct(C[i][j], own) + " of "
          + D.labels[i] + ", " + pct(C[i][j], C[j][j]) + " of " + D.labels[j] + ")"));
      g.appendChild(s("rect", {x: x, y: y, width: cell - 1, height: cell - 1, fill: i === j ? "#e4e7ec" : ramp(v),
        class: "cell"}));
      if (i !== j && C[i][j]) {
        const t = Math.round(100 * v);
        g.appendChild(s("text", {x: x + cell / 2 - 0.5, y: y + cell * 0.64, "text-anchor": "middle",
          style: "font-size:9px;fill:" + (v > 0.55 ? "#fff" : "#1d2330")}, t < 1 ? "<1" : String(t)));
      }
      svg.appendChild(g);
    }
  }
  const bar = document.querySelector(".ramp i");
  if (bar) bar.style.background = "linear-gradient(to right," + [0, 0.25, 0.5, 0.75, 1].map(ramp).join(",") + ")";
}

function drawHists() {
  const box = document.getElementById("hists"), H0 = D.hist, B = H0.bins;
  const log = document.getElementById("loghist").checked;
  box.textContent = "";
  const W = 220, H = 92, pad = 4, axis = 14, ph = H - axis - pad, bw = (W - 2 * pad) / B;
  D.labels.forEach((lab, j) => {
    const T = H0.tagged[j], U = H0.untagged[j], tot = T.map((t, b) => t + U[b]), max = Math.max(1, maxOf(tot));
    const scale = v => log ? Math.log1p(v) / Math.log1p(max) : v / max;
    const fig = h("figure", {class: "hist"});
    const cap = h("figcaption", {}, lab + " ");
    cap.appendChild(h("span", {}, fmt(D.files_per_label[j]) + " tagged"));
    fig.appendChild(cap);
    const svg = s("svg", {viewBox: "0 0 " + W + " " + H, width: W, height: H});
    svg.appendChild(s("line", {x1: pad, x2: W - pad, y1: pad + ph + 0.5, y2: pad + ph + 0.5, stroke: "#cbd2dc"}));
    for (let b = 0; b < B; b++) {
      if (!tot[b]) continue;
      const hh = Math.max(1, scale(tot[b]) * ph), ht = hh * T[b] / tot[b], x = pad + b * bw;
      const g = s("g");
      g.appendChild(s("title", {}, lab + " " + (b / B).toFixed(2) + "-" + ((b + 1) / B).toFixed(2) + ": " + fmt(tot[b])
        + " files, " + fmt(T[b]) + " tagged"));
      const width = Math.max(0.5, bw - 0.6);  // heights: never negative, even by a rounding error
      g.appendChild(s("rect", {x: x, y: pad + ph - hh, width: width, height: Math.max(0, hh - ht), class: "ut"}));
      if (T[b]) g.appendChild(s("rect", {x: x, y: pad + ph - ht, width: width, height: ht, class: "tg"}));
      svg.appendChild(g);
    }
    const thr = H0.threshold[j];
    if (thr !== null && thr !== undefined) {
      const x = pad + thr * (W - 2 * pad);
      const line = s("line", {x1: x, x2: x, y1: pad, y2: pad + ph, class: "thr"});
      line.appendChild(s("title", {}, (H0.threshold_kind === "inferred" ? "lowest tagged score " : "threshold ") + thr));
      svg.appendChild(line);
    }
    [[0, "start"], [0.5, "middle"], [1, "end"]].forEach(([v, anchor]) =>
      svg.appendChild(s("text", {x: pad + v * (W - 2 * pad), y: H - 2, "text-anchor": anchor, class: "num"},
        String(v))));
    fig.appendChild(svg);
    box.appendChild(fig);
  });
}

function setupProblems() {
  const P = D.problems, N = P.name.length, input = document.getElementById("pfilter");
  if (!input) return;
  const tbody = document.querySelector("#ptable tbody"), count = document.getElementById("pcount");
  const path = i => (P.dirs[P.dir[i]] ? P.dirs[P.dir[i]] + "/" : "") + P.name[i];
  const row = i => [P.statuses[P.status[i]], path(i), P.messages[P.msg[i]]];
  const more = document.getElementById("pall");
  let hay = null, matches = [], limit = __PROBLEM_ROWS__;  // thousands of rows at once would make typing lag
  function update() {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    if (words.length && !hay) {
      hay = new Array(N);
      for (let i = 0; i < N; i++) hay[i] = row(i).join(" ").toLowerCase();
    }
    matches = [];
    for (let i = 0; i < N; i++) if (words.every(w => hay[i].includes(w))) matches.push(i);
    const frag = document.createDocumentFragment();
    matches.slice(0, limit).forEach(i => {
      const tr = h("tr");
      row(i).forEach(text => tr.appendChild(h("td", {}, text)));
      frag.appendChild(tr);
    });
    tbody.textContent = "";
    tbody.appendChild(frag);
    count.textContent = (matches.length > limit ? "showing the first " + fmt(limit) + " of " : "")
      + fmt(matches.length) + " matching of " + fmt(N);
    more.hidden = matches.length <= limit;
  }
  more.addEventListener("click", () => { limit = Infinity; update(); });
  let timer = 0;
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(update, N > 20000 ? 150 : 0); });
  document.getElementById("pcsv").addEventListener("click", () => {
    const q = v => /[",\n\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
    const lines = ["status,path,error"].concat(matches.map(i => row(i).map(q).join(",")));
    const blob = new Blob([lines.join("\n") + "\n"], {type: "text/csv"});
    const a = h("a", {href: URL.createObjectURL(blob), download: "problems.csv"});
    document.body.appendChild(a); a.click(); a.remove();
  });
  update();
}

// A list of files narrowed by the words typed into ``input`` (every word in the path); ``show(i)``
// draws the i-th file of ``paths`` when it is chosen (or is the first left after a filter).
function fileList(input, select, count, paths, show) {
  function fill() {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean), keep = select.value;
    const frag = document.createDocumentFragment();
    let n = 0;
    paths.forEach((path, i) => {
      const p = path.toLowerCase();
      if (words.every(w => p.includes(w))) { frag.appendChild(h("option", {value: String(i)}, path)); n++; }
    });
    select.textContent = "";
    select.appendChild(frag);
    count.textContent = fmt(n) + " of " + fmt(paths.length) + " files";
    if (n) {
      select.value = keep;
      if (select.selectedIndex < 0) select.selectedIndex = 0;
      show(Number(select.value));
    }
  }
  input.addEventListener("input", fill);
  select.addEventListener("change", () => show(Number(select.value)));
  fill();
}

function setupTimelines() {
  const TL = D.timelines, select = document.getElementById("tselect");
  if (!select) return;
  const input = document.getElementById("tfilter"), canvas = document.getElementById("tcanvas");
  const labelsBox = document.getElementById("tlabels"), info = document.getElementById("tinfo");
  const axis = document.getElementById("taxis"), hover = document.getElementById("thover");
  const rowH = 14, W = 1000;
  let cur = null;
  function decode(f) {
    const raw = atob(f.q), q = new Uint8Array(raw.length);
    for (let k = 0; k < raw.length; k++) q[k] = raw.charCodeAt(k);
    const starts = f.starts || Array.from({length: f.cols}, (_, c) => f.t0 + c * f.dt);
    return {f: f, q: q, starts: starts, labels: TL.label_sets[f.ls], span: Math.max(f.end, 1e-6)};
  }
  function draw(i) {
    const t = decode(TL.files[i]), f = t.f, n = t.labels.length, cols = f.cols;
    cur = t;
    canvas.width = W; canvas.height = n * rowH; canvas.style.height = (n * rowH) + "px";
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, n * rowH);
    for (let c = 0; c < cols; c++) {
      const x0 = Math.round(t.starts[c] / t.span * W);
      const x1 = Math.max(x0 + 1, c + 1 < cols ? Math.round(t.starts[c + 1] / t.span * W) : W);
      for (let l = 0; l < n; l++) {
        ctx.fillStyle = ramp(t.q[l * cols + c] / 255);
        ctx.fillRect(x0, l * rowH, x1 - x0, rowH - 1);
      }
    }
    const tags = new Set(f.tags || []);
    labelsBox.textContent = "";
    t.labels.forEach(lab => labelsBox.appendChild(h("div", tags.has(lab) ? {class: "on", title: "tagged"} : {}, lab)));
    axis.textContent = "";
    const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 18000];
    const step = steps.find(v => t.span / v <= 10) || 36000;
    for (let v = 0; v <= t.span + 1e-9; v += step)
      axis.appendChild(h("span", {style: "left:" + (100 * v / t.span) + "%"}, clock(v)));
    info.textContent = "";
    info.appendChild(h("b", {}, f.path));
    const bits = [clock(f.end) + " long", fmt(cols) + (cols === 1 ? " column" : " columns")];
    if (f.pool > 1) bits.push("windows max-pooled by " + f.pool);
    if (f.status) bits.push("status " + f.status);
    bits.push(f.tags ? (f.tags.length ? "tagged: " + f.tags.join(", ") : "no tag") : "no row in TAGS");
    info.appendChild(document.createTextNode("  " + bits.join(" \u00b7 ")));
    hover.textContent = "\u00a0";
  }
  canvas.addEventListener("mousemove", e => {
    if (!cur) return;
    const r = canvas.getBoundingClientRect(), n = cur.labels.length;
    const sec = (e.clientX - r.left) / r.width * cur.span, l = Math.floor((e.clientY - r.top) / r.height * n);
    let c = 0;
    while (c + 1 < cur.f.cols && cur.starts[c + 1] <= sec) c++;
    if (l < 0 || l >= n) return;
    const end = c + 1 < cur.f.cols ? cur.starts[c + 1] : cur.f.end;
    hover.textContent = cur.labels[l] + " at " + clock(cur.starts[c]) + "-" + clock(end) + ": score "
      + (cur.q[l * cur.f.cols + c] / 255).toFixed(2);
  });
  fileList(input, select, document.getElementById("tcount"), TL.files.map(f => f.path), draw);
  // Open on the longest sampled file: more to see than in a one-window clip.
  let longest = 0;
  TL.files.forEach((f, i) => { if (f.cols > TL.files[longest].cols) longest = i; });
  select.value = String(longest);
  draw(longest);
}

function setupSimilar() {
  const S = D.similar, select = document.getElementById("sselect");
  if (!select) return;
  const input = document.getElementById("sfilter"), body = document.querySelector("#stable tbody");
  const info = document.getElementById("sinfo");
  function tags(n) { const t = S.tags[n]; return t === null ? "(no row in TAGS)" : (t.length ? t.join(", ") : "no tag"); }
  function show(i) {
    const [q, near] = S.files[i];
    info.textContent = "";
    info.appendChild(h("b", {}, S.names[q]));
    info.appendChild(document.createTextNode("  \u00b7 " + tags(q)));
    body.textContent = "";
    near.forEach(([n, sim], r) => {
      const tr = h("tr", {});
      tr.appendChild(h("td", {class: "num"}, String(r + 1)));
      tr.appendChild(h("td", {class: "num"}, (sim / 1000).toFixed(3)));
      tr.appendChild(h("td", {}, S.names[n]));
      tr.appendChild(h("td", {}, tags(n)));
      body.appendChild(tr);
    });
  }
  fileList(input, select, document.getElementById("scount"), S.files.map(([q]) => S.names[q]), show);
}

document.querySelectorAll("a[data-open]").forEach(a => a.addEventListener("click", () => {
  const target = document.getElementById(a.getAttribute("data-open"));
  if (target) target.open = true;
}));
guarded("instruments", drawBars);
guarded("instruments", drawCooc);
guarded("scores", drawHists);
document.getElementById("loghist").addEventListener("change", () => guarded("scores", drawHists));
guarded("problems", setupProblems);
guarded("timelines", setupTimelines);
guarded("similar", setupSimilar);
document.documentElement.setAttribute("data-ready", "1");
})();
"""
