"""The model and scoring options every command that tags shares (``scan``, ``tag``, ``serve``,
``watch``), declared once: :func:`model_options` adds them to a click command, :func:`resolve_model`
turns them into a model file (the same default and first-scan fallback as the scan), and
:func:`scoring_options` into checked :class:`~mictag.runtime.scan.pipeline.ScanOptions`."""

from __future__ import annotations

import os
from collections.abc import Callable

import click

from mictag.errors import ConfigError

BACKENDS = ["auto", "openvino", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch"]
FLAGS = {"threshold": "--threshold", "aggregate": "--aggregate", "batch_size": "--batch-size",
         "workers": "--workers", "hop_seconds": "--hop"}

_OPTIONS = [
    click.option("--model", type=click.Path(), help="An exported model (.onnx, TensorRT .engine or torch .pt). "
                 "Default: the zero-training tagger (see `mictag models`)."),
    click.option("--ast", "ast", help="Without --model: build the zero-training tagger from this AudioSet AST."),
    click.option("--backbone", type=click.Choice(["ast", "musicnn"]), default=None,
                 help="Without --model: the AST's zero-training tagger, or musicnn's musicnn-openmic20 tagger "
                 "(3-s windows, all 20 labels, trained on the generated corpus). Default: the AST where it can be "
                 "had (cached, or downloaded once), else musicnn (fetched with pip once)."),
    click.option("--wheel", type=click.Path(exists=True, dir_okay=False), help="Where musicnn's weights are needed "
                 "and missing: take them from this musicnn-0.1.0 wheel instead of downloading it."),
    click.option("--zero-training", is_flag=True, help="With --backbone musicnn: the fixed MagnaTagATune map "
                 "instead (no training; 8 of the 20 labels)."),
    click.option("--musicnn", "musicnn", default="MTT_musicnn", show_default=True,
                 help="With --backbone musicnn: MTT_musicnn or MTT_vgg (converted by `mictag models pull musicnn`; "
                 "MTT_vgg has only the zero-training tagger)."),
    click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                 help="auto: the fastest path here whose deviation from fp32 is bounded (shown by `mictag info` and "
                 "in the summary)."),
    click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "int8"]), default=None,
                 help="Override the precision auto chooses (bf16 where the CPU has it natively, int8 from a "
                 "calibrated variant where it has VNNI, else fp32)."),
    click.option("--batch-size", type=int, help="Windows per model call (default: the backend's choice)."),
    click.option("--hop", "hop", type=float, help="Seconds between window starts (default: the model's window; "
                 "10.24 s for the AST, 2.992 s for musicnn)."),
    click.option("--aggregate", type=click.Choice(["max", "mean"]), default="max", show_default=True),
    click.option("--threshold", type=float, help="One tag threshold for every label, instead of the model's own."),
]
MODEL_PARAMS = ("model", "ast", "backbone", "wheel", "zero_training", "musicnn")
SCORING_PARAMS = ("hop", "batch_size", "aggregate", "threshold")


def model_options(command: Callable) -> Callable:
    """Add the shared options to ``command`` (in the order ``mictag scan --help`` shows them)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def resolve_model(model, ast, backbone, wheel, zero_training, musicnn, say: Callable[[str], None]) -> str:
    """The model file the options name: ``--model``, else the default of ``--backbone`` (built or
    fetched once), else what the first scan takes (the AST where it can be had, else musicnn)."""
    from mictag.catalog import default_model, ensure_musicnn_weights, first_scan_model

    if model is not None:
        return str(model)
    if backbone is None and ast is None and not zero_training:
        return str(first_scan_model(on_message=say, wheel=wheel))
    if backbone == "musicnn" or zero_training:
        ensure_musicnn_weights(musicnn, wheel, say)
    return str(default_model(ast, on_message=say, backbone=backbone or ("musicnn" if zero_training else "ast"),
                             musicnn=musicnn, zero_training=zero_training))


def default_workers(workers: int | None) -> int:
    return workers if workers is not None else max(1, (os.cpu_count() or 2) - 1)


def scoring_options(hop, batch_size, aggregate, threshold, workers: int, **more):
    """Checked ScanOptions; a bad value is a ConfigError naming the flag the user typed."""
    from mictag.runtime.scan.pipeline import ScanOptions

    try:
        return ScanOptions(hop_seconds=hop, batch_size=batch_size, aggregate=aggregate, threshold=threshold,
                           workers=workers, **more)
    except ConfigError as exc:
        raise ConfigError(exc.problem, FLAGS.get(exc.option, exc.option)) from None
