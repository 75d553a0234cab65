"""The default model and the model cache (``mictag models pull`` / ``list``).

With no ``--model``, ``mictag scan`` uses the zero-training tagger (AudioSet AST + the fixed
many-to-one map), built once from an AudioSet AST found locally and cached as
``$MICTAG_HOME/models/zero-training-<sha12>.onnx``. ``mictag models pull`` downloads the AST
(≈350 MB, ``MIT/ast-finetuned-audioset-10-10-0.4593``) into the Hugging Face cache, checks its
sha256 and builds that tagger; building needs the ``[train]`` extra (torch), scanning does not.

``--backbone musicnn`` uses musicnn (MTT): ``mictag models pull musicnn`` converts its weights and
builds two taggers: ``musicnn-openmic20`` (the default: a reprogrammer and mapper trained on the
generated corpus, shipped inside the package, all 20 labels; :mod:`mictag.catalog.shipped`) and the
zero-training one with the fixed MagnaTagATune -> OpenMIC map (8 of the 20 labels;
``--zero-training``), ``musicnn-zero-training-<sha12>.onnx``. Neither needs Hugging Face.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from mictag.backbones.ast_sources import DEFAULT_HUB_ID
from mictag.catalog.shipped import DEFAULT_SHIPPED, available, built_name, provenance, summary
from mictag.errors import CheckpointError, MictagError, ModelNotFoundError
from mictag.metadata import int8_path
from mictag.paths import mictag_home


HOW_TO_GET_ONE = (
    "no model to scan with: run `mictag models pull` once online (downloads the ~350 MB AudioSet AST and "
    "builds the zero-training tagger), or pass --ast PATH (audioset_10_10_0.4593.pth or a Hugging Face "
    "model directory), or --model an exported .onnx / .engine / .pt. Without the AST (offline, no Hugging "
    "Face access) you can tag now with musicnn: `mictag models pull musicnn` (or `--wheel musicnn-0.1.0-py3-none-any.whl` "
    "offline), then `mictag scan LIBRARY --backbone musicnn --out tags.csv` (all 20 labels)")
NEEDS_MUSICNN_BUILD = ("the {name} tagger is not built yet and building it needs torch: run `mictag models pull "
                       "musicnn` where the [train] extra is installed, or scan with --zero-training")


VARIANT_SUFFIXES = (".int8.onnx", ".partial.onnx")  # beside a tagger, not taggers of their own


def models_dir() -> Path:
    return mictag_home() / "models"


def _tagger_prefix(backbone: str) -> str:
    return "zero-training-" if backbone == "ast" else f"{backbone}-zero-training-"


def cached_taggers(backbone: str = "ast") -> list[Path]:
    """Zero-training taggers of ``backbone`` already built, newest first."""
    d = models_dir()
    found = [p for p in d.glob(f"{_tagger_prefix(backbone)}*.onnx") if not p.name.endswith(VARIANT_SUFFIXES)] \
        if d.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def cached_shipped(name: str) -> list[Path]:
    """Builds of the shipped tagger ``name`` in the cache, newest first."""
    d = models_dir()
    found = [p for p in d.glob(f"{name}-*.onnx") if not p.name.endswith(VARIANT_SUFFIXES)] if d.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def verify_hub_blob(weights: Path) -> str:
    """sha256 of a hub-cache weights file, checked against its blob name (the hub stores large
    files under their sha256): a torn or altered download is refused."""
    from mictag.digest import file_digest

    digest = file_digest(weights)
    blob = Path(os.path.realpath(weights))
    if blob.parent.name == "blobs" and len(blob.name) == 64 and blob.name != digest:
        raise MictagError(f"{weights} is damaged: its sha256 {digest[:12]}... is not the {blob.name[:12]}... "
                          f"the hub recorded; delete it and run `mictag models pull` again")
    return digest


def zero_training_path(backbone: str, weights: Path) -> Path:
    """Where the zero-training tagger of these backbone weights is built: named by the AST file's
    sha256 (checked against its hub blob name), or by musicnn's tensor digest, which, unlike its
    file's sha256, stays the same when `models pull musicnn` converts the wheel again."""
    if backbone == "musicnn":
        from mictag.backbones.musicnn_weights import tensor_digest

        digest = tensor_digest(weights)
    else:
        digest = verify_hub_blob(weights)
    return models_dir() / f"{_tagger_prefix(backbone)}{digest[:12]}.onnx"


def wants_int8(int8: bool | None) -> bool:
    """Whether to build a tagger's int8 variant: asked, or where auto would run it (a CPU with int8
    dot products)."""
    if int8 is not None:
        return int8
    from mictag.cpu import cpu_info

    return cpu_info().int8 is not None


def build_default_tagger(source: str | os.PathLike, on_message=None, backbone: str = "ast",
                         int8: bool | None = None) -> Path:
    """The zero-training tagger for a backbone ``source``, built once and cached by its sha256; and
    its calibrated int8 variant beside it where :func:`wants_int8`."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MictagError("building the zero-training tagger needs torch: pip install 'mictag[train]' "
                          "(or scan with --model an exported .onnx)") from None
    from mictag.backbones.frozen import weights_file
    from mictag.export.onnx import export_onnx, metadata
    from mictag.export.zero_training import zero_training_tagger

    target = zero_training_path(backbone, weights_file(backbone, source))
    if not target.is_file():
        if on_message:
            on_message(f"building the zero-training tagger from {source} (once; cached as {target})")
        system, extra = zero_training_tagger(source, backbone=backbone)
        meta = metadata(system, [0.5] * len(system.cfg.labels), {**extra, "precision": "fp32"}, "fbank")
        tmp = target.with_name(target.name + ".partial.onnx")
        export_onnx(system, tmp, meta, "fbank")
        os.replace(tmp, target)
    ensure_int8(target, int8, on_message)
    warm_engines(target, on_message)
    return target


def warm_engines(model: Path, on_message=None) -> None:
    """Compile, once, what a scan of ``model`` would run here (auto's path and, for a checked fast
    path, its fp32 reference) into OpenVINO's compiled-model cache, so that a model's first scan
    starts as fast as its later ones. Engines without such a cache have nothing to warm."""
    from mictag.runtime.engines.open import plan_engine, reference_plan

    try:
        plan = plan_engine(model)
    except MictagError:
        return
    plans = [plan] + ([reference_plan(plan, model)] if plan.check else [])
    wanted = [p for p in plans if p.backend == "openvino"]
    if not wanted:
        return
    from mictag.runtime.engines.openvino import compile_model

    if on_message:
        on_message(f"compiling it for this CPU ({', '.join(f'{p.backend} {p.rest or p.precision}' for p in wanted)}; "
                   f"once, cached)")
    for p in wanted:
        try:
            compile_model(p.model, p.rest or p.precision)
        except Exception:  # a scan compiles (and reports) for itself
            pass


def ensure_int8(target: Path, int8: bool | None, on_message=None) -> None:
    """Calibrate ``target``'s int8 variant beside it where :func:`wants_int8` and it is missing."""
    if wants_int8(int8) and not int8_path(target).is_file():
        from mictag.export.onnx import write_int8
        from mictag.metadata import read_metadata

        if on_message:
            on_message("calibrating its int8 variant (this CPU has int8 dot products; once, about a minute)")
        _, record = write_int8(target, read_metadata(target))
        if on_message:
            on_message(f"int8 variant: max |dp| {record['max_abs_dp']:.3f} from fp32 on {record['windows']} windows")


def build_shipped_tagger(name: str, on_message=None, int8: bool | None = None) -> Path:
    """A shipped tagger (below) built against the user's backbone, once."""
    try:
        from mictag.export.shipped_tagger import build_shipped
    except ImportError:
        raise MictagError(NEEDS_MUSICNN_BUILD.format(name=name)) from None
    target = build_shipped(name, models_dir(), on_message)
    ensure_int8(target, int8, on_message)
    warm_engines(target, on_message)
    return target


def shipped_build_path(name: str, backbone_ref: dict) -> Path:
    """Where this mictag's shipped tagger ``name``, built against the musicnn weights here, sits in
    the cache (MictagError without those weights)."""
    from mictag.backbones.musicnn_weights import tensor_digest

    return models_dir() / built_name(name, tensor_digest(require_musicnn_weights(backbone_ref["source"])))


def shipped_tagger(name: str, on_message=None) -> Path:
    """The built shipped tagger ``name``: found by its weights' and backbone's sha256 (no torch),
    else built (torch)."""

    ref = provenance(name)["backbone"]
    if ref["kind"] != "musicnn":
        raise MictagError(f"shipped taggers on a {ref['kind']} backbone are not supported")
    built = shipped_build_path(name, ref)
    if built.is_file():
        return built
    if importlib.util.find_spec("torch") is None:
        raise MictagError(NEEDS_MUSICNN_BUILD.format(name=name))
    return build_shipped_tagger(name, on_message)


def default_model(ast: str | os.PathLike | None = None, on_message=None, backbone: str = "ast",
                  musicnn: str = "MTT_musicnn", zero_training: bool = False) -> Path:
    """What ``mictag scan`` uses without ``--model``: for the AST its zero-training tagger; for
    musicnn the shipped 20-label tagger (MTT_musicnn), or with ``zero_training`` (or another
    musicnn model) the zero-training one."""
    if backbone == "musicnn":

        name = DEFAULT_SHIPPED["musicnn"]
        if not zero_training and name in available() and musicnn == provenance(name)["backbone"]["source"]:
            require_musicnn_weights(musicnn)
            return shipped_tagger(name, on_message)
        return default_musicnn_model(musicnn, on_message)
    if ast:
        return build_default_tagger(ast, on_message)
    built = cached_taggers()
    if built:
        return built[0]
    try:
        from mictag.backbones.ast_sources import resolve_hub

        local = resolve_hub(DEFAULT_HUB_ID, download=False)  # the cache only; pulling is explicit
    except (ImportError, ModelNotFoundError):
        raise ModelNotFoundError(HOW_TO_GET_ONE) from None
    return build_default_tagger(local, on_message)


def default_musicnn_model(model: str = "MTT_musicnn", on_message=None) -> Path:
    """The zero-training tagger of a musicnn ``model`` converted by `mictag models pull musicnn`:
    found by its weights' sha256 (no torch needed), else built; with no weights, the error says
    how to get them."""
    built = zero_training_path("musicnn", require_musicnn_weights(model))
    return built if built.is_file() else build_default_tagger(model, on_message, backbone="musicnn")


def first_scan_model(on_message=None, wheel: str | os.PathLike | None = None) -> Path:
    """The model a scan (and ``Tagger()``) uses when none is named: the AudioSet AST's tagger where
    the AST can be had (built already, in the Hugging Face cache, or downloaded from the hub with a
    progress bar), else the shipped ``musicnn-openmic20`` tagger, its backbone fetched with pip on
    first use (as ``mictag models pull musicnn`` does; ``wheel``: from a copied wheel instead).
    Unless the AST's tagger was simply found, one line says which model, why, and how to get the
    other; with no way to either, one error names both."""
    say = on_message or (lambda m: None)
    built = cached_taggers()
    if built:
        return built[0]
    ast_problem = ""
    try:
        local = _ast_here_or_downloaded(say, may_download=wheel is None and not _has_musicnn_build())
        return build_default_tagger(local, on_message)
    except ImportError:
        ast_problem = "huggingface_hub is not installed (pip install 'mictag[train]')"
    except ModelNotFoundError as exc:
        ast_problem = str(exc).split(";")[0]
    name = _shipped_default()
    try:
        ensure_musicnn_weights("MTT_musicnn", wheel, say)
        try:
            path = shipped_tagger(name, on_message) if name else default_musicnn_model("MTT_musicnn", on_message)
        except CheckpointError as exc:  # musicnn weights other than those it was trained on
            say(f"{name} cannot run on these musicnn weights ({exc}): the musicnn zero-training tagger (8 labels) instead")
            name, path = None, default_musicnn_model("MTT_musicnn", on_message)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"no model to scan with, and none can be fetched here: the AudioSet AST is not here ({ast_problem}), "
            f"and musicnn could not be fetched ({str(exc).split(';')[0]}). Either get the AST (`mictag models pull` "
            f"online, or --ast audioset_10_10_0.4593.pth / a Hugging Face model directory you copied here), or "
            f"musicnn (`mictag models pull musicnn` online, or `mictag models pull musicnn --wheel "
            f"musicnn-0.1.0-py3-none-any.whl` with a wheel you copied here); or name an exported model with --model") from None
    say(f"scanning with {name + ' (musicnn, all 20 labels)' if name else 'the musicnn zero-training tagger'}, not the AudioSet AST: "
        f"{ast_problem}. For the AST: `mictag models pull` when the Hugging Face hub can be reached, or --ast PATH")
    return path


def _ast_here_or_downloaded(say, may_download: bool) -> Path:
    """The default AudioSet AST in the Hugging Face cache, downloaded first where ``may_download``
    (not when musicnn is here or on its way: no 350 MB download unasked then)."""
    from mictag.backbones.ast_sources import resolve_hub

    try:
        return resolve_hub(DEFAULT_HUB_ID, download=False)
    except ModelNotFoundError:
        if not may_download:
            raise
    say(f"no model here yet: fetching the AudioSet AST ({DEFAULT_HUB_ID}, about 350 MB) from the Hugging Face "
        f"hub, once")
    return resolve_hub(DEFAULT_HUB_ID, download=True)


def _shipped_default() -> str | None:

    name = DEFAULT_SHIPPED["musicnn"]
    return name if name in available() else None


def _has_musicnn_build() -> bool:
    """Whether the shipped musicnn tagger is built here already (an earlier first scan fell back to it)."""
    name = _shipped_default()
    return bool(name and cached_shipped(name))


def ensure_musicnn_weights(model: str, wheel: str | os.PathLike | None = None, on_message=None) -> Path:
    """The converted weights of a musicnn ``model``, fetched with pip (with progress) or taken from
    ``wheel`` first when they are not here: what a scan does on first use, as `models pull musicnn`."""
    try:
        return require_musicnn_weights(model)
    except ModelNotFoundError:
        if wheel is None and on_message:
            on_message("fetching musicnn's weights with pip (the 29 MB musicnn 0.1.0 wheel), once")
        pull_musicnn(wheel, progress=True)
    return require_musicnn_weights(model)


def pull_musicnn(wheel: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Fetch (pip) or take ``wheel``, and convert musicnn's four checkpoints into the cache."""
    from mictag.backbones.musicnn_weights import pull

    return pull(wheel, progress=progress)


def require_musicnn_weights(model: str) -> Path:
    """The converted weights of a musicnn ``model``; the error says how to get them."""
    from mictag.backbones.musicnn_weights import MODELS, require_weights

    if model not in MODELS:
        raise MictagError(f"unknown musicnn model {model!r}: choose one of {', '.join(MODELS)}")
    return require_weights(model)


def pull(repo_id: str = DEFAULT_HUB_ID, on_message=None, int8: bool | None = None) -> Path:
    """Download (or find in the cache) an AudioSet AST, verify it, build and cache its tagger."""
    try:
        from mictag.backbones.ast_sources import resolve_hub
    except ImportError:
        raise MictagError("`mictag models pull` needs the [train] extra: pip install 'mictag[train]'") from None
    local = resolve_hub(repo_id)
    return build_default_tagger(local, on_message, int8=int8)


def _source_of(tagger: Path) -> str:
    """The backbone a built tagger came from, as its metadata records it."""
    from mictag.metadata import read_metadata

    try:
        return str((read_metadata(tagger).get("backbone") or {}).get("source", "unknown source"))
    except Exception:  # a damaged file is listed all the same; scanning with it reports the damage
        return "unreadable metadata"


def listing() -> list[tuple[str, str]]:
    """(what, where) for the models mictag can use here."""

    rows = [(f"zero-training tagger ({p.stat().st_size / 1e6:.0f} MB)", str(p)) for p in cached_taggers()]
    zero = {}
    for name in available():
        record = provenance(name)
        zero.update({record["backbone"]["source"]: record.get("zero_training_baseline")})
        try:
            current = shipped_build_path(name, record["backbone"]).name
        except MictagError:
            current = None  # no musicnn weights here: every cached build is an older one
        for p in cached_shipped(name):
            size = f"{p.stat().st_size / 1e6:.1f} MB"
            rows.append((f"{name} tagger (musicnn default): {summary(record)} ({size})" if p.name == current
                         else f"{name}, an older build (other weights or another musicnn; not used; "
                              f"`mictag models pull musicnn` builds this mictag's; {size})", str(p)))
    for p in cached_taggers("musicnn"):
        source, baseline = _source_of(p), None
        baseline = zero.get(source)
        scores = (f"; corpus test macro F1 {baseline['test']['macro_f1']:.3f} on its {len(baseline['labels'])} labels"
                  if baseline else "")
        rows.append((f"musicnn zero-training tagger, {source} (--zero-training; MTT map{scores}; "
                     f"{p.stat().st_size / 1e6:.1f} MB)", str(p)))
    built = cached_taggers() + cached_taggers("musicnn") + [p for n in available() for p in cached_shipped(n)]
    rows += [(f"  its int8 variant ({int8_path(p).stat().st_size / 1e6:.0f} MB)", str(int8_path(p)))
             for p in built if int8_path(p).is_file()]
    if models_dir().is_dir():
        rows += [("exported model", str(p)) for p in sorted(models_dir().glob("*"))
                 if p.suffix in (".onnx", ".engine", ".pt") and p not in built and "zero-training-" not in p.name
                 and not p.name.endswith(VARIANT_SUFFIXES)]
        rows += [(f"musicnn weights {p.stem}", str(p)) for p in sorted((models_dir() / "musicnn").glob("*.safetensors"))]
    try:
        from mictag.backbones.ast_sources import resolve_hub

        rows.append((f"AudioSet AST {DEFAULT_HUB_ID}", str(resolve_hub(DEFAULT_HUB_ID, download=False))))
    except (ImportError, MictagError):
        pass
    return rows
