"""``mictag write-tags``: the click command over :func:`mictag.filetags.write.write_tags`.

It only parses, runs and reports; mutagen is imported when the command runs, not when the CLI
starts. Registered in the CLI with ``main.add_command(write_tags)``, whose group turns a
MictagError into one line and exit code 2.
"""

from __future__ import annotations

import sys

import click


@click.command("write-tags")
@click.argument("tags", type=click.Path())
@click.option("--library", required=True, type=click.Path(),
              help="The folder that was scanned: TAGS names its files relative to it.")
@click.option("--dry-run", is_flag=True, help="Print what would change; touch no file.")
@click.option("--field", default="INSTRUMENTS", show_default=True,
              help="The tag that holds the instruments (Vorbis comment, ID3 TXXX, MP4 freeform name).")
@click.option("--scores", is_flag=True, help="Also write each label's probability (MICTAG_GUITAR=0.912, ...) "
              "and the model's fingerprint (MICTAG_MODEL).")
@click.option("--wait", is_flag=True, help="If a scan is writing TAGS, wait for it to end instead of stopping.")
def write_tags(tags: str, library: str, dry_run: bool, field: str, scores: bool, wait: bool) -> None:
    """Write the instruments `mictag scan` found (TAGS: its --out) into each file's own metadata.

    FLAC, Ogg Vorbis and Opus get a Vorbis comment, MP3, WAV and AIFF an ID3v2.4 TXXX frame,
    M4A/MP4 an iTunes freeform atom, one value per instrument; the audio is never re-encoded and
    other tags stay. Only files unchanged since the scan are written; their rows in TAGS then get
    the new size and mtime, so a rescan skips them. Rerunning changes nothing.

    Exit codes: 0 nothing failed; 1 some files failed or were refused (a path leading outside
    the library); 2 it could not run (TAGS or the library missing or unreadable, a bad option,
    TAGS busy or not writable); 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP (rerun to finish)."""
    from mictag.filetags.write import summary_line
    from mictag.filetags.write import write_tags as write_library_tags
    from mictag.runtime.scan.signals import StopSignals

    with StopSignals() as stop:
        try:
            summary = write_library_tags(tags, library, field=field, scores=scores, dry_run=dry_run,
                                         on_message=click.echo, should_stop=stop, wait=wait)
        except KeyboardInterrupt:  # a second signal: stopped after the file in progress was saved
            click.echo("interrupted: the files written so far are recorded in TAGS; rerun the same command to "
                       "do the rest", err=True)
            sys.exit(stop.exit_code)
    click.echo(summary_line(summary))
    sys.exit(stop.exit_code if summary.interrupted else summary.exit_code)
