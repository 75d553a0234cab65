"""``mictag tag FILE...``: tag individual files with the scan's decode, windows and engine choice
(the files go through the same :class:`~mictag.runtime.scan.pipeline.Scanner`), and print one
JSON object per file (``--json``, :mod:`mictag.ingest.record`) or one line per file, in the order
the files were given, each as soon as it and those before it are done."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mictag.cli_options import default_workers, model_options, resolve_model, scoring_options


@click.command("tag")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (JSON lines): path, status, "
              "duration, scores, tags, segments, model, mictag version.")
@model_options
@click.option("--workers", type=int, default=None, help="Decode processes (default: CPU cores - 1, at least 1; "
              "0 decodes in this process: quickest for one short file).")
@click.option("--quiet", "-q", is_flag=True, help="Nothing on stderr but errors.")
def tag(files, as_json, model, ast, backbone, wheel, zero_training, musicnn, backend, precision, batch_size, hop,
        aggregate, threshold, workers, quiet) -> None:
    """Tag FILE... and print each file's result on stdout.

    Exit codes as `mictag scan`'s: 0 every file tagged; 1 some files failed (their objects say
    why, status "error"); 2 nothing could run (bad option or model)."""
    from mictag.api import Tagger, tag_files
    from mictag.digest import file_digest
    from mictag.ingest.record import file_record

    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    path = resolve_model(model, ast, backbone, wheel, zero_training, musicnn, say)
    options = scoring_options(hop, batch_size, aggregate, threshold, default_workers(workers), segments=True)
    tagger = Tagger(path, backend=backend, batch_size=options.batch_size, hop_seconds=options.hop_seconds,
                    aggregate=options.aggregate, threshold=options.threshold, segments=True, precision=precision,
                    on_message=say)
    identity = {"name": Path(path).name, "sha256": file_digest(path)}
    ready: dict[int, object] = {}
    shown, failed = 0, 0
    for key, result in tag_files(tagger, enumerate(files), workers=options.workers):
        ready[key] = result
        while shown in ready:
            r = ready.pop(shown)
            failed += r.status == "error"
            if as_json:
                # ASCII JSON (non-ASCII as \u escapes): the same bytes whatever the locale's encoding
                click.echo(json.dumps(file_record(r, tagger.labels, identity)))
            elif r.status == "error":
                click.echo(f"{r.path}: error: {r.error}")
            else:
                note = f" ({r.status}: {r.error})" if r.error else ""
                click.echo(f"{r.path}: {', '.join(r.tags) if r.tags else '(no instrument)'}{note}")
            sys.stdout.flush()
            shown += 1
    if failed:
        sys.exit(1)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on (a non-loopback "
              "one needs a token).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--root", "roots", multiple=True, required=True, type=click.Path(),
              help="A folder whose files requests may name (repeatable); any other path is refused unopened.")
@click.option("--token-file", type=click.Path(), help="A file whose first line is the bearer token clients send "
              "(or set MICTAG_TOKEN).")
@click.option("--max-upload", type=click.IntRange(min=1), default=200 * 2**20, show_default=True,
              help="The largest upload accepted, in bytes.")
@click.option("--queue", "capacity", type=click.IntRange(min=1), default=256, show_default=True,
              help="Files accepted and not yet answered; past it, 503 with Retry-After.")
@model_options
@click.option("--workers", type=int, default=None, help="Decode processes (default: CPU cores - 1, at least 1).")
def serve(host, port, roots, token_file, max_upload, capacity, model, ast, backbone, wheel, zero_training, musicnn,
          backend, precision, batch_size, hop, aggregate, threshold, workers) -> None:
    """Tag files over HTTP/JSON: POST /v1/tag, GET /v1/health, /v1/ready, /v1/model, /v1/stats.

    Loads the model once and batches the windows of concurrent requests into the engine. SIGTERM
    or Ctrl-C: stops accepting, answers the requests in flight, exits 0. See README, "For archives
    and pipelines"."""
    from mictag.ingest.server import read_token, serve as run
    from mictag.ingest.service import TaggingService

    say = (lambda m: click.echo(m, err=True))
    token = read_token(token_file)
    options = scoring_options(hop, batch_size, aggregate, threshold, default_workers(workers))
    model_path = resolve_model(model, ast, backbone, wheel, zero_training, musicnn, say)
    run(host, port, list(roots), token, max_upload,
        lambda: TaggingService(model_path, options, backend, precision, capacity, on_message=say))


@click.command("watch")
@click.argument("folder", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="tags.csv (or .jsonl / .parquet): the same output "
              "`mictag scan FOLDER --out` writes.")
@model_options
@click.option("--workers", type=int, default=None, help="Decode processes (default: CPU cores - 1, at least 1).")
@click.option("--settle", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
              help="Seconds a file's size and mtime must stay the same before it is tagged.")
@click.option("--poll", is_flag=True, help="List the folder every --interval seconds instead of waiting for the "
              "system's notifications (network shares send none).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="With --poll: seconds between listings.")
@click.option("--include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Skip files matching this glob (repeatable).")
@click.option("--segments", type=click.Path(), help="Also write per-window scores here, as `scan --segments`.")
@click.option("--embeddings", type=click.Path(), help="Also write each file's embedding, as `scan --embeddings`.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors and each batch's summary.")
def watch(folder, out, model, ast, backbone, wheel, zero_training, musicnn, backend, precision, batch_size, hop,
          aggregate, threshold, workers, settle, poll, interval, include, exclude, segments, embeddings, quiet) -> None:
    """Tag the audio files that arrive in FOLDER, into --out, until stopped.

    First tags what arrived since the last run (as `mictag scan FOLDER --out OUT` would), then each
    file once it has stopped changing. Holds --out's lock while it runs: a `mictag scan` of the same
    output waits or stops. Ctrl-C (or SIGTERM, SIGHUP) finishes the files in progress and exits with
    the signal's code (130/143/129); run it again to go on."""
    from mictag.ingest.watch import Watcher
    from mictag.output.journal import writing
    from mictag.output.lock import OutputLock
    from mictag.runtime.engines.open import open_backend
    from mictag.runtime.scan.run import ScanRequest, summary_line
    from mictag.runtime.scan.signals import StopSignals

    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    if not Path(folder).is_dir():
        raise click.UsageError(f"{folder} is not a folder")
    with StopSignals() as stop:
        model_path = resolve_model(model, ast, backbone, wheel, zero_training, musicnn, say)
        options = scoring_options(hop, batch_size, aggregate, threshold, default_workers(workers))
        request = ScanRequest(folder, out, model_path, backend, options, include=tuple(include), exclude=tuple(exclude),
                              segments=segments, embeddings=embeddings, precision=precision)
        with writing(out):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        with OutputLock(out, False, say):
            engine = open_backend(model_path, backend, precision=precision, on_message=say, library=folder)
            watcher = Watcher(request, engine, settle, poll, interval, on_message=say,
                              on_scan=lambda s: click.echo(summary_line(s), err=True) if s.files > s.skipped else None)
            say(f"watching {folder} ({'polling every %g s' % interval if poll else 'notifications'}; a file is "
                f"tagged once unchanged for {settle:g} s); Ctrl-C stops")
            try:
                watcher.run(stop)
            except KeyboardInterrupt:
                pass
    if stop():
        sys.exit(stop.exit_code)
