"""The ``mictag report`` command: parses and validates, then calls :func:`mictag.report.make_report`.

Its errors are :class:`mictag.report.ReportError` (a MictagError): the mictag group prints them as
one line and exits 2. Importing it stays cheap (no numpy) for ``mictag --help``.
"""

from __future__ import annotations

import click

from mictag.report import SIMILAR, TIMELINES


@click.command("report")
@click.argument("tags", type=click.Path())
@click.option("--segments", type=click.Path(), help="The scan's --segments file: per-file timelines (a sample).")
@click.option("--out", required=True, type=click.Path(), help="The HTML file to write (one file, opens offline).")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "jsonl", "parquet"]), default="auto",
              show_default=True, help="TAGS' format (auto: from its suffix, else its first bytes).")
@click.option("--timelines", type=click.IntRange(min=0), default=TIMELINES, show_default=True,
              help="Embed the timelines of at most this many files, drawn uniformly at random.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the timeline and similar-files samples.")
@click.option("--embeddings", type=click.Path(), help="The scan's --embeddings table: a \"similar files\" panel.")
@click.option("--similar", type=click.IntRange(min=0), default=SIMILAR, show_default=True,
              help="Embed the nearest files of at most this many files, drawn uniformly at random.")
def report(tags: str, segments: str | None, out: str, fmt: str, timelines: int, seed: int, embeddings: str | None,
           similar: int) -> None:
    """Write one self-contained HTML page about a scan's output TAGS: the summary, files per
    instrument, co-occurrence, score distributions, every problem file and per-file timelines."""
    from mictag.report import make_report

    done = make_report(tags, out, segments, fmt, timelines, seed, embeddings, similar)
    click.echo(f"wrote {done.out} ({done.bytes / 1e6:.2f} MB): {done.files:,} files, {done.problems:,} problems, "
               f"{done.timelines:,} timelines, in {done.seconds:.1f} s")
