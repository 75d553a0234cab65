"""The ``mictag`` command line: a thin layer over the library. Heavy imports (torch, onnxruntime)
happen inside the commands that need them, so ``mictag --help`` starts fast."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys

import click

from mictag import __version__
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
def info() -> None:
    """Show the version, the backends that import here and where models are looked up."""
    click.echo(f"mictag {__version__} (Python {platform.python_version()}, {platform.machine()})")
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


@main.command()
@click.option("--mapper", type=click.Choice(["head", "fc"]), default="head", show_default=True,
              help="Output mapper of the reprogrammed systems (head: the authors' code; fc: the paper's text).")
def params(mapper: str) -> None:
    """Trainable parameters of each system, as in the paper's Table 1 (full-size AST)."""
    _need("torch", "mictag params")
    from mictag.model.system import parameter_table

    rows = parameter_table(mapper=mapper)
    width = max(len(name) for name, _ in rows)
    click.echo(f"{'system'.ljust(width)}  {'trainable':>12}  {'(M)':>8}")
    for name, count in rows:
        click.echo(f"{name.ljust(width)}  {count:>12,}  {count / 1e6:>8.3f}")


def _need(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MictagError(f"{what} needs {module}: pip install 'mictag[train]'")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
