"""The ``mictag`` command line: a thin layer over the library. Heavy imports (torch, onnxruntime)
happen inside the commands that need them, so ``mictag --help`` starts fast."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from pathlib import Path

import click

from mictag import __version__
from mictag.cli_options import BACKENDS, default_workers, model_options, resolve_model, scoring_options
from mictag.errors import MictagError
from mictag.paths import hf_hub_cache, mictag_home


class _Group(click.Group):
    """Turns mictag's typed errors into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MictagError as exc:
            click.echo(f"mictag: error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mictag")
def main() -> None:
    """Tag the instruments in every file of an audio library (reprogrammed AST, OpenMIC's 20 classes)."""


def _module_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # present but broken (e.g. a CUDA build without its libraries)
        return f"present but fails to import ({type(exc).__name__}: {exc})"
    return getattr(module, "__version__", "unknown version")


@main.command()
@click.option("--model", type=click.Path(), help="Show how this model would run here (default: the cached taggers).")
@click.option("--backend", default="auto", show_default=True, help="As in `mictag scan`.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "int8"]), default=None)
@click.option("--library", type=click.Path(), help="Plan for this library: a fast path refused there is passed over.")
def info(model, backend, precision, library) -> None:
    """Show the version, the CPU, the backends that import here, where models are looked up, and
    which engine and precision each model would run in, and why."""
    from mictag.cpu import cpu_info

    click.echo(f"mictag {__version__} (Python {platform.python_version()}, {platform.machine()})")
    cpu = cpu_info()
    click.echo(f"cpu: {cpu.describe()}")
    if importlib.util.find_spec("openvino") is not None:
        from mictag.runtime.engines.openvino import import_openvino

        try:
            click.echo(f"openvino {import_openvino().get_version()} (its telemetry stays off)")
        except Exception as exc:
            click.echo(f"openvino: present but fails to import ({type(exc).__name__}: {exc})")
    else:
        click.echo("openvino: not installed (pip install openvino: the fast CPU engine, bf16 where the CPU has it)")
    ort = _module_version("onnxruntime")
    if ort and ort[0].isdigit():
        import onnxruntime

        click.echo(f"onnxruntime {ort}: providers {', '.join(onnxruntime.get_available_providers())}")
    else:
        click.echo(f"onnxruntime: {ort or 'not installed'}")
    trt = _module_version("tensorrt")
    click.echo(f"tensorrt: {trt or 'not installed'}")
    torch_version = _module_version("torch")
    if torch_version and torch_version[0].isdigit():
        import torch

        devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        click.echo(f"torch {torch_version}: devices {', '.join(devices)}")
    else:
        click.echo(f"torch: {torch_version or 'not installed'} (needed for train/export/torch backend: pip install 'mictag[train]')")
    click.echo(f"model cache: {mictag_home()}  (set MICTAG_HOME to move it)")
    click.echo(f"Hugging Face cache: {hf_hub_cache()}  (HF_HOME / HF_HUB_CACHE)")
    from mictag.runtime.engines.open import plan_engine
    from mictag.catalog import cached_taggers

    shown = [model] if model else [*cached_taggers()[:1], *cached_taggers("musicnn")[:1]]
    for path in shown:
        try:
            plan = plan_engine(path, backend, precision, library)
        except MictagError as exc:
            click.echo(f"{path}: cannot run here: {exc}")
            continue
        click.echo(f"{path}: runs on {plan.describe()}" + (f", from {plan.model.name}" if str(plan.model) != str(path) else "")
                   + (", checked against fp32 as it goes" if plan.check else ""))
        for line in (*plan.warnings, *([plan.advice] if plan.advice else [])):
            click.echo(f"  {line}")
        for line in _verdict_lines(Path(path)):
            click.echo(f"  {line}")
    if not shown:
        click.echo("no model cached yet (`mictag models pull`); `mictag info --model M` shows how M would run")


def _verdict_lines(model) -> list[str]:
    """What the checks of earlier scans found for ``model``'s fast paths, a line per library."""
    from mictag.metadata import int8_path
    from mictag.runtime.engines.trust import Verdicts

    verdicts = Verdicts()
    found = {}
    for file in (model, int8_path(model)):
        prefix = None
        for key, by_library in verdicts.all_for_file(file).items():
            prefix = key.rsplit("|", 1)[-1]
            for library, entry in by_library.items():
                found[(prefix, library)] = entry
    lines = []
    for (path, library), e in sorted(found.items()):
        where = "the Python API" if library == "python-api" else library
        if e.get("refused"):
            lines.append(f"{path} on {where}: refused until {str(e.get('until', ''))[:10]} ({e['refused']})")
        else:
            lines.append(f"{path} on {where}: {e.get('windows_checked', 0):,} windows checked over {e.get('scans', 0)} "
                         f"scans, max |dp| {e.get('max_abs_dp', 0.0):.3f} from fp32")
    return lines


# ScanOptions' fields as `mictag scan` spells them, for its error messages.
_BACKBONE = click.option("--backbone", type=click.Choice(["ast", "musicnn"]), default="ast", show_default=True,
                         help="The frozen backbone: the AudioSet AST, or musicnn (MTT; `mictag models pull musicnn`).")
_MUSICNN = click.option("--musicnn", "musicnn", default="MTT_musicnn", show_default=True,
                        help="With --backbone musicnn: the musicnn model in the cache, or a converted .safetensors file.")


@main.command()
@click.option("--mapper", type=click.Choice(["head", "fc"]), default="head", show_default=True,
              help="Output mapper of the reprogrammed systems (head: the authors' code; fc: the paper's text).")
@_BACKBONE
def params(mapper: str, backbone: str) -> None:
    """Trainable parameters of each system, as in the paper's Table 1 (full-size backbone)."""
    _need("torch", "mictag params")
    from mictag.model.system import parameter_table

    rows = parameter_table(mapper=mapper, backbone=backbone)
    width = max(len(name) for name, _ in rows)
    click.echo(f"{'system'.ljust(width)}  {'trainable':>12}  {'(M)':>8}")
    for name, count in rows:
        click.echo(f"{name.ljust(width)}  {count:>12,}  {count / 1e6:>8.3f}")


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def _options(pairs: tuple[str, ...], what: str) -> dict:
    """KEY=VALUE pairs -> dict, values parsed as JSON where they parse (numbers, booleans)."""
    import json

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MictagError(f"{what} option {pair!r} must look like KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@main.command()
@click.argument("data", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["auto", "openmic", "folder"]), default="auto", show_default=True,
              help="Data layout: OpenMIC-2018, or a folder with labels.csv.")
@_BACKBONE
@click.option("--ast", "ast", help="Frozen AST: audioset_10_10_0.4593.pth, a Hugging Face model directory or a hub id.")
@_MUSICNN
@click.option("--reprogrammer", type=click.Choice(["none", "noise", "cnn", "unet"]), default="unet", show_default=True)
@click.option("--reprogrammer-option", "rp_opts", multiple=True, metavar="KEY=VALUE",
              help="E.g. init=zeros (noise), activation=relu (cnn), trainable=false (unet).")
@click.option("--mapper", type=click.Choice(["head", "mlp", "fc", "many-to-one"]), default="head", show_default=True)
@click.option("--mapper-option", "map_opts", multiple=True, metavar="KEY=VALUE", help="E.g. reduce=mean (many-to-one).")
@click.option("--baseline", type=click.Choice(["cnn-bs", "finetune"]), default=None, help="Train a baseline instead.")
@click.option("--recipe", type=click.Choice(["paper", "authors-code"]), default="paper", show_default=True)
@click.option("--epochs", type=int, help="Override the recipe's epochs.")
@click.option("--batch-size", type=int, help="Override the recipe's batch size.")
@click.option("--lr", type=float, help="Override the recipe's learning rate.")
@click.option("--seed", type=int, help="Override the recipe's seed.")
@click.option("--recipe-option", "recipe_opts", multiple=True, metavar="KEY=VALUE",
              help="Override any other recipe field (weight_decay, freqm, timem, hard_targets, schedule).")
@click.option("--raw-fbank", is_flag=True, help="Feed the raw fbank, unnormalised (the authors' code).")
@click.option("--runs", type=int, default=1, show_default=True, help="Repeat with seeds seed..seed+N-1; report mean +- std.")
@click.option("--val-fraction", type=float, default=0.15, show_default=True)
@click.option("--cache-dir", type=click.Path(), help="Feature cache (default: the mictag cache).")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="Mixed precision: auto = CUDA autocast on a GPU, bf16 autocast on a CPU with native bf16, "
              "else fp32.")
@click.option("--out", required=True, type=click.Path(), help="Output directory (model.pt, metrics.json).")
def train(data, fmt, backbone, ast, musicnn, reprogrammer, rp_opts, mapper, map_opts, baseline, recipe, epochs,
          batch_size, lr, seed, recipe_opts, raw_fbank, runs, val_fraction, cache_dir, device, precision, out) -> None:
    """Train a reprogrammer and mapper against the frozen backbone (AST or musicnn) on DATA."""
    _need("torch", "mictag train")
    from mictag.train.recipes import get_recipe
    from mictag.train.trainer import TrainSpec
    from mictag.train.trainer import train as run_training

    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, **_options(recipe_opts, "recipe")}
    if "betas" in overrides:
        overrides["betas"] = tuple(overrides["betas"])
    spec = TrainSpec(data=data, source=ast if backbone == "ast" else musicnn, backbone=backbone, out=out,
                     recipe=get_recipe(recipe, **overrides), fmt=fmt,
                     reprogrammer=reprogrammer, reprogrammer_options=_options(rp_opts, "reprogrammer"),
                     mapper=mapper, mapper_options=_options(map_opts, "mapper"), baseline=baseline,
                     normalize_input=not raw_fbank, val_fraction=val_fraction, cache_dir=cache_dir, device=device,
                     precision=precision)
    result = run_training(spec, runs=runs, progress=_echo_err)
    summary = result["summary"]
    if runs > 1:
        click.echo(f"test macro F1 over {runs} runs: {summary['test_macro_f1_mean']:.4f} +- {summary['test_macro_f1_std']:.4f}")
    else:
        click.echo(f"test macro F1 {summary['test_macro_f1_mean']:.4f}; model written to {summary['models'][0]}")


@main.command()
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="Data set to evaluate on.")
@click.option("--format", "fmt", type=click.Choice(["auto", "openmic", "folder"]), default="auto", show_default=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--ast", "ast", help="Where the frozen AST (or musicnn weights) is, if not where the model says.")
@click.option("--cache-dir", type=click.Path())
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the validation split (as in training).")
def evaluate(model, data, fmt, split, ast, cache_dir, seed) -> None:
    """Per-instrument OpenMIC F1, positive F1 and AP of a trained MODEL."""
    _need("torch", "mictag evaluate")
    from mictag.train.trainer import evaluate_model

    protocol, tuned = evaluate_model(model, data, fmt, split, ast, cache_dir, seed=seed)
    click.echo(protocol.table())
    click.echo(f"macro F1 (OpenMIC protocol, threshold 0.5): {protocol.macro_f1:.4f}")
    click.echo(f"macro F1 with the model's tuned thresholds: {tuned.macro_f1:.4f}")


@main.command()
@click.argument("model", type=click.Path(), required=False)
@click.option("--out", type=click.Path(), help="The .onnx file to write (waveform input).")
@click.option("--fbank-out", type=click.Path(), help="Also write the fbank-input variant here (streaming-mel path).")
@click.option("--torch-out", type=click.Path(), help="Also write the PyTorch artifact (the torch backend's model).")
@click.option("--engine", type=click.Path(), help="Also build a TensorRT engine here (needs TensorRT and a GPU); "
              "MODEL may then be an exported .onnx.")
@click.option("--engine-batch", nargs=3, type=int, default=(1, 32, 128), show_default=True,
              metavar="MIN OPT MAX", help="The engine's optimisation profile over the batch axis.")
@click.option("--ast", "ast", help="Frozen AST (.pth, model directory or hub id): where MODEL's backbone is, or, "
              "without MODEL, the AudioSet checkpoint to build the zero-training tagger from.")
@_BACKBONE
@_MUSICNN
@click.option("--mapper", type=click.Choice(["many-to-one"]), default="many-to-one", show_default=True,
              help="Without MODEL: the fixed map from the backbone's classes (AudioSet or MagnaTagATune) to OpenMIC.")
@click.option("--reduce", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="Without MODEL: how a label reduces its source classes.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int8-dynamic"]), default="fp32",
              show_default=True, help="fp16: the graph in fp16 (GPU; fbank, LayerNorm and Softmax stay fp32). int8: "
              "also a static, calibrated int8 graph beside it (X.int8.onnx; for CPUs with VNNI and no bf16: the "
              "scan's auto tries it where its deviation is within 0.015, and checks it as it runs). int8-dynamic: the graph with dynamically "
              "quantised weights. The deviation from fp32 is measured and printed.")
@click.option("--calibrate", type=click.Path(exists=True, file_okay=False),
              help="With --precision int8: calibrate on audio files from this folder (default: synthetic signals).")
@click.option("--opset", type=int, default=17, show_default=True)
def export(model, out, fbank_out, torch_out, engine, engine_batch, ast, backbone, musicnn, mapper, reduce, precision,
           calibrate, opset) -> None:
    """Fuse a trained MODEL (front end + reprogrammer + backbone + mapper + sigmoid) into one ONNX
    graph, or, with no MODEL, build the zero-training instrument tagger: from an AudioSet AST
    (--ast) or from musicnn (--backbone musicnn)."""
    import time
    from pathlib import Path

    if not (out or fbank_out or torch_out or engine):
        raise MictagError("say what to write: --out model.onnx, --fbank-out, --torch-out or --engine")
    if model and model.endswith(".onnx"):
        if not engine:
            raise MictagError(f"{model} is already exported: with an .onnx MODEL, only --engine applies")
        from mictag.export.onnx import read_metadata
        from mictag.export.tensorrt import EngineSpec, build_engine

        meta = read_metadata(model)
        written = build_engine(model, engine, meta, EngineSpec(*engine_batch, fp16=True))
        click.echo(f"wrote {written} (TensorRT, metadata in {written}.json)")
        return
    _need("torch", "mictag export")
    _need("onnx", "mictag export")
    from mictag.export.onnx import convert_precision, export_onnx, metadata, write_int8

    if model:
        from mictag.train.checkpoint import load_model

        system, payload = load_model(model, ast or (musicnn if backbone == "musicnn" else None))
        thresholds = payload["thresholds"]
        extra = {"backbone": payload.get("backbone"), "recipe": payload.get("recipe"), "metrics": payload.get("metrics")}
    elif ast or backbone == "musicnn":
        from mictag.export.zero_training import zero_training_tagger

        source = musicnn if backbone == "musicnn" else ast
        system, extra = zero_training_tagger(source, reduce=reduce, backbone=backbone)
        thresholds = [0.5] * len(system.cfg.labels)
    else:
        raise MictagError("give a trained MODEL, or --ast CHECKPOINT (or --backbone musicnn) to build the "
                          "zero-training tagger")
    for variant, path in (("waveform", out), ("fbank", fbank_out)):
        if path:
            t0 = time.perf_counter()
            meta = metadata(system, thresholds, {**extra, "precision": "fp32"}, variant)
            written = export_onnx(system, path, meta, variant, opset)
            if precision == "int8":
                int8, record = write_int8(written, meta, calibrate)
                click.echo(f"int8 deviation from fp32: max |dp| = {record['max_abs_dp']:.2e}, tag sets changed in "
                           f"{100 * record['tag_changes']:.1f}% of {record['windows']} windows ({record['calibration']}); "
                           f"wrote {int8} ({int8.stat().st_size / 1e6:.1f} MB)")
            elif precision != "fp32":
                written, deviation = convert_precision(written, meta, precision)
                click.echo(f"{precision} deviation from fp32: max |dp| = {deviation:.2e} on random windows")
            click.echo(f"wrote {written} ({variant} input, {written.stat().st_size / 1e6:.1f} MB, "
                       f"{time.perf_counter() - t0:.1f} s)")
    if torch_out:
        from mictag.export.torch_artifact import save_torch_artifact

        meta = metadata(system, thresholds, {**extra, "precision": "fp32"}, "waveform")
        written = save_torch_artifact(system, torch_out, meta)
        click.echo(f"wrote {written} (PyTorch artifact, {written.stat().st_size / 1e6:.1f} MB)")
    if engine:
        from mictag.export.tensorrt import EngineSpec, build_engine

        # TensorRT builds from the fp32 graph and chooses fp16 kernels itself.
        source = out if out and precision == "fp32" else str(Path(engine).with_suffix(".onnx"))
        meta = metadata(system, thresholds, {**extra, "precision": "fp16"}, "waveform")
        if source != out:
            export_onnx(system, source, meta, "waveform", opset)
        written = build_engine(source, engine, meta, EngineSpec(*engine_batch, fp16=True))
        click.echo(f"wrote {written} (TensorRT, metadata in {written}.json)")


class _Progress:
    """One self-rewriting status line on a terminal: files done/total, windows/s, ETA, errors."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, p: dict) -> None:
        if not self.enabled:
            return
        done, total, elapsed = p["files_done"], p["files_total"], max(p["elapsed"], 1e-9)
        eta = (total - done) * elapsed / done if done else float("nan")
        eta_text = f"{eta / 60:.1f} min" if eta == eta else "?"
        line = (f"\r{done}/{total} files  {p['windows'] / elapsed:.2f} windows/s  ETA {eta_text}  "
                f"errors {p.get('errors', 0)}")
        click.echo(line.ljust(78), err=True, nl=False)

    def close(self) -> None:
        if self.enabled:
            click.echo("", err=True)


@main.command()
@click.argument("library", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="tags.csv (or .jsonl / .parquet).")
@model_options
@click.option("--include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Skip files matching this glob (repeatable).")
@click.option("--workers", type=int, default=None, help="Decode processes (default: CPU cores - 1, at least 1).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), help="Default: from --out's suffix.")
@click.option("--segments", type=click.Path(), help="Also write per-window scores (start/end s) as JSON lines here.")
@click.option("--embeddings", type=click.Path(), help="Also write each file's embedding (the model's pooled features, "
              "averaged over its windows, L2-normalised) to this Parquet table, for `mictag similar`.")
@click.option("--overwrite", is_flag=True, help="Start afresh instead of resuming.")
@click.option("--retry-failed", is_flag=True, help="Resume, redoing only the files that failed before.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line or summary.")
@click.option("--wait", is_flag=True, help="If another scan is writing --out, wait for it to end instead of stopping.")
@click.option("--write-tags", "write_file_tags", is_flag=True, help="Then write each file's instruments into its own "
              "metadata, as `mictag write-tags` does.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run as a Ray Data pipeline: join the cluster at ADDRESS, or start a local Ray without one.")
def scan(library, out, model, ast, backbone, wheel, zero_training, musicnn, backend, precision, batch_size, hop, aggregate,
         threshold, include, exclude, workers, fmt, segments, embeddings, overwrite, retry_failed, quiet, wait,
         write_file_tags, ray_address) -> None:
    """Tag every audio file under LIBRARY: one row per file in --out.

    Ctrl-C (or SIGTERM, SIGHUP) stops it after the files in progress, a second one at once; rerun
    the same command to resume. Exit codes: 0 every file tagged; 1 some files failed (status
    "error" rows); 2 the scan could not run (bad option, model or library; output busy or not
    writable); 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP."""
    from mictag.runtime.scan.signals import StopSignals
    from mictag.runtime.scan.run import ScanRequest, interrupted_line, run_scan, special_line, summary_line

    say = (lambda m: None) if quiet else _echo_err
    counts: dict = {}  # done / total, kept up to date by the scan
    with StopSignals() as stop:
        try:
            model = resolve_model(model, ast, backbone, wheel, zero_training, musicnn, say)
            workers = default_workers(workers)
            options = scoring_options(hop, batch_size, aggregate, threshold, workers)
            progress = _Progress(not quiet and sys.stderr.isatty())
            try:
                request = ScanRequest(library, out, model, backend, options, fmt, tuple(include), tuple(exclude),
                                      overwrite, retry_failed, segments, use_ray=ray_address is not None,
                                      ray_address=None if ray_address in (None, "local") else ray_address,
                                      ray_workers=workers + 1 if ray_address == "local" else None,
                                      precision=precision, wait=wait, embeddings=embeddings)
                summary = run_scan(request, on_progress=progress, on_message=say, should_stop=stop, counts=counts)
            finally:
                progress.close()
        except KeyboardInterrupt:  # a second signal (or one before the scan began): stop now
            click.echo(interrupted_line(counts["done"], counts["total"]) if counts
                       else "interrupted before the scan began; nothing was written", err=True)
            sys.exit(stop.exit_code)
    if summary.interrupted:
        click.echo(summary_line(summary), err=True)  # said even with --quiet: the table is incomplete
        sys.exit(stop.exit_code)
    for note in (*summary.notes, special_line(summary.special)):
        if note:
            say(note)
    say(summary_line(summary))
    code = summary.exit_code
    if write_file_tags:
        from mictag.filetags.write import summary_line as tags_summary_line, write_tags as write_tags_of

        with StopSignals() as stop:
            written = write_tags_of(out, library, on_message=say, should_stop=stop)
        if written.interrupted:
            click.echo(tags_summary_line(written), err=True)
            sys.exit(stop.exit_code)
        say(tags_summary_line(written))
        code = max(code, written.exit_code)
    sys.exit(code)


@main.command()
@click.argument("embeddings", type=click.Path())
@click.argument("query", required=False)
@click.option("-k", "k", type=int, default=10, show_default=True, help="How many neighbours.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "m3u"]), default="table", show_default=True,
              help="json: a list of {path, similarity}, nearest first; m3u: a playlist of the files.")
@click.option("--tags", help="Only files tagged with all of these labels (comma-separated), from the scan's tags "
              "output.")
@click.option("--tags-file", type=click.Path(), help="The tags output to read --tags from (default: the one the "
              "scan wrote beside EMBEDDINGS).")
@click.option("--model", type=click.Path(), help="For a QUERY outside the table: the model to score it with "
              "(default: the one that made the table; another one is refused).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="The engine that scores a QUERY outside the table.")
@click.option("--index", "kind", type=click.Choice(["auto", "exact", "hnsw"]), default="auto", show_default=True,
              help="exact search, or an HNSW graph (USearch); auto: exact up to 100,000 files.")
@click.option("--build", is_flag=True, help="Build (or rebuild) the index now; without QUERY, only that.")
def similar(embeddings, query, k, fmt, tags, tags_file, model, backend, kind, build) -> None:
    """The files that sound most like QUERY, from EMBEDDINGS (`mictag scan --embeddings`).

    QUERY is a file of the table (its path there, or on disk) or any audio file (scored with the
    table's model). The index beside the table is built on first use and refreshed whenever the
    table changed. Exit codes: 0 answered; 2 bad table, query or option."""
    from mictag.similar.search import build as build_index, find_similar, render

    if build:
        build_index(embeddings, kind, on_message=_echo_err)
        if query is None:
            return
    elif query is None:
        raise MictagError("give a QUERY (a file), or --build to build the index only")
    wanted = [t.strip() for t in tags.split(",") if t.strip()] if tags else None
    answer = find_similar(embeddings, query, k, wanted, tags_file, model, kind, backend, on_message=_echo_err)
    _echo_err(f"nearest {len(answer.neighbours)} to {answer.query} ({answer.how})")
    click.echo(render(answer, fmt), nl=False)


@main.group()
def corpus() -> None:
    """The training corpus: polyphonic clips rendered from recorded-instrument samples."""


@corpus.command("build")
@click.option("--out", required=True, type=click.Path(), help="Folder to write (audio/, labels.csv, SOURCES.md ...).")
@click.option("--clips", type=int, default=3000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--packages", multiple=True, help="Debian packages to draw from (default: all the corpus knows).")
@click.option("--cache", type=click.Path(), help="Where the packages are downloaded and unpacked "
              "(default: $MICTAG_HOME/cache/debs).")
@click.option("--workers", type=int, default=None, help="Render processes (default: the CPU count).")
@click.option("--style", default="v1", show_default=True,
              help="v1: the clips as first built; produced: performed notes (tempo drift, timing, dynamics), "
                   "reverbs, a bus compressor and a master limiter; oneshots: one instrument a clip, one "
                   "isolated note, chord or hit every 3 s (a sample library's files).")
@click.option("--negatives", type=float, default=0.0, show_default=True,
              help="Share of clips with no instrument (silence, noise, applause, speech: all labels 0); "
                   "needs --style produced.")
def corpus_build(out, clips, seed, packages, cache, workers, style, negatives) -> None:
    """Build the corpus into OUT (apt-get download + dpkg-deb, no root; FluidSynth's library)."""
    from mictag.corpus.build import CorpusSpec, build
    from mictag.corpus.instruments import PACKAGES

    # The spec checks --style and --negatives (a ConfigError: one line, exit status 2).
    spec = CorpusSpec(clips=clips, seed=seed, packages=tuple(packages) or PACKAGES, style=style, negatives=negatives)
    report = build(out, spec, cache, workers, on_message=_echo_err)  # its errors are mictag's: one line
    click.echo(f"wrote {report['clips']} clips to {out} in {report['seconds']:.0f} s (recipe {report['recipe_digest']}); "
               f"sources and licences in {out}/SOURCES.md")


@main.group()
def models() -> None:
    """The model cache: what is there, and getting the default model."""


@models.command("list")
def models_list() -> None:
    """Models found locally."""
    from mictag.catalog import listing, models_dir

    rows = listing()
    if not rows:
        click.echo(f"no models yet in {models_dir()} or the Hugging Face cache: run `mictag models pull`")
    for what, where in rows:
        click.echo(f"{what}: {where}")


@models.command("pull")
@click.argument("repo_id", required=False)
@click.option("--wheel", type=click.Path(exists=True), help="musicnn only: convert this musicnn-0.1.0 wheel "
              "instead of downloading it.")
@click.option("--int8/--no-int8", default=None, help="Also calibrate the tagger's int8 variant (default: on a CPU "
              "with int8 dot products, where the scan uses it).")
def models_pull(repo_id, wheel, int8) -> None:
    """Download the AudioSet AST (~350 MB, into the Hugging Face cache; only when not cached),
    verify its sha256 and build the zero-training tagger that `mictag scan` uses by default.

    `mictag models pull musicnn` instead fetches the musicnn 0.1.0 wheel with pip (or takes --wheel),
    converts its TensorFlow checkpoints to safetensors (TensorFlow is never needed) and builds the
    musicnn-openmic20 tagger (shipped in the package, all 20 labels) and the zero-training one."""
    if repo_id == "musicnn":
        from mictag.backbones.musicnn_weights import LICENCE_NOTE, cache_dir, pull as pull_musicnn

        manifest = pull_musicnn(wheel)
        for model, entry in manifest.items():
            click.echo(f"{model}: {entry['tensors']} tensors, sha256 {entry['sha256'][:12]}...")
        click.echo(f"musicnn weights in {cache_dir()} ({LICENCE_NOTE})")
        if importlib.util.find_spec("torch") is not None:
            from mictag.catalog import build_default_tagger

            path = build_default_tagger("MTT_musicnn", _echo_err, backbone="musicnn", int8=int8)
            click.echo(f"musicnn zero-training tagger ready: {path} (`mictag scan --backbone musicnn --zero-training`)")
            _pull_shipped(int8)
        return
    from mictag.catalog import DEFAULT_HUB_ID, pull

    path = pull(repo_id or DEFAULT_HUB_ID, on_message=_echo_err, int8=int8)
    click.echo(f"default tagger ready: {path}")


def _pull_shipped(int8) -> None:
    """Build the shipped musicnn tagger; a backbone it was not trained on leaves the zero-training one."""
    from mictag.errors import CheckpointError
    from mictag.catalog import build_shipped_tagger
    from mictag.catalog.shipped import DEFAULT_SHIPPED, available, provenance, summary

    name = DEFAULT_SHIPPED["musicnn"]
    if name not in available():
        return
    try:
        path = build_shipped_tagger(name, _echo_err, int8=int8)
    except CheckpointError as exc:
        click.echo(f"mictag: warning: {name} not built: {exc}", err=True)
        return
    click.echo(f"{name} tagger ready: {path} (`mictag scan --backbone musicnn`; {summary(provenance(name))})")


def _need(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MictagError(f"{what} needs {module}: pip install 'mictag[train]'")


# Commands that live beside what they drive (each module imports only click at import time).
from mictag.filetags.command import write_tags  # noqa: E402
from mictag.report.command import report  # noqa: E402
from mictag.ingest.command import serve, tag, watch  # noqa: E402

main.add_command(write_tags)
main.add_command(report)
main.add_command(tag)
main.add_command(serve)
main.add_command(watch)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
