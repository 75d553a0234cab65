"""Loading AudioSet AST weights from what users have: the original ``audioset_10_10_0.4593.pth``
(a DataParallel state dict), a Hugging Face model directory (config.json + safetensors or bin), or
a Hugging Face hub id resolved through the local hub cache (downloading only when online; where
the weights are is :mod:`mictag.backbones.ast_sources`, which needs no torch)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from mictag.errors import CheckpointError, ModelNotFoundError
from mictag.backbones.ast import AST, ASTConfig, resize_pos_embed
from mictag.backbones.ast_sources import DEFAULT_HUB_ID, looks_like_hub_id, resolve_hub


# Original (timm DeiT inside ``module.v``) -> ours. Block internals keep their names.
_ORIGINAL_RENAMES = [
    (r"^v\.patch_embed\.proj\.", "patch_embed."),
    (r"^v\.(cls_token|dist_token|pos_embed)$", r"\1"),
    (r"^v\.blocks\.", "blocks."),
    (r"^v\.norm\.", "norm."),
    (r"^mlp_head\.0\.", "head_norm."),
    (r"^mlp_head\.1\.", "head."),
]
# Present in the original file but unused by AST (DeiT's own ImageNet heads).
_ORIGINAL_UNUSED = re.compile(r"^v\.(head|head_dist)\.")

_HF = "audio_spectrogram_transformer."
_HF_RENAMES = [
    (rf"^{_HF}embeddings\.cls_token$", "cls_token"),
    (rf"^{_HF}embeddings\.distillation_token$", "dist_token"),
    (rf"^{_HF}embeddings\.position_embeddings$", "pos_embed"),
    (rf"^{_HF}embeddings\.patch_embeddings\.projection\.", "patch_embed."),
    # Hub checkpoints (and save_pretrained) use the ViT names ...
    (rf"^{_HF}encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (rf"^{_HF}encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (rf"^{_HF}encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (rf"^{_HF}encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (rf"^{_HF}encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (rf"^{_HF}encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    # ... transformers >= 5 names the same tensors differently in memory.
    (rf"^{_HF}layers\.(\d+)\.attention\.(q|k|v)_proj\.", r"blocks.\1.attn.\2."),
    (rf"^{_HF}layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (rf"^{_HF}layers\.(\d+)\.mlp\.(fc1|fc2)\.", r"blocks.\1.mlp.\2."),
    (rf"^{_HF}layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (rf"^{_HF}layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (rf"^{_HF}layernorm\.", "norm."),
    (r"^classifier\.layernorm\.", "head_norm."),
    (r"^classifier\.dense\.", "head."),
]
_QKV_PARTS = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def _rename(state: dict, renames: list[tuple[str, str]]) -> tuple[dict, list[str]]:
    out, unknown = {}, []
    for key, value in state.items():
        for pattern, repl in renames:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                out[new] = value
                break
        else:
            unknown.append(key)
    return out, unknown


def _fuse_qkv(state: dict) -> dict:
    """Concatenate split query/key/value tensors into the fused ``attn.qkv`` ones."""
    out, parts = {}, {}
    for key, value in state.items():
        m = re.match(r"^(blocks\.\d+\.attn)\.(query|key|value|q|k|v)\.(weight|bias)$", key)
        if m:
            parts.setdefault((m[1], m[3]), [None, None, None])[_QKV_PARTS[m[2]]] = value
        else:
            out[key] = value
    for (prefix, kind), pieces in parts.items():
        missing = [name for name, p in zip(("query", "key", "value"), pieces) if p is None]
        if missing:
            raise CheckpointError(f"checkpoint has an incomplete attention at {prefix}: no {', '.join(missing)} {kind}")
        out[f"{prefix}.qkv.{kind}"] = torch.cat(pieces, dim=0)
    return out


def convert_original_state_dict(state: dict) -> dict:
    """Original AST state dict (with or without DataParallel's ``module.``) -> our key names."""
    stripped = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    used = {k: v for k, v in stripped.items() if not _ORIGINAL_UNUSED.match(k)}
    converted, unknown = _rename(used, _ORIGINAL_RENAMES)
    converted.update({k: used[k] for k in unknown})  # reported as unexpected by the loader
    return converted


def convert_hf_state_dict(state: dict) -> dict:
    """Hugging Face ``ASTForAudioClassification`` state dict -> our key names."""
    converted, unknown = _rename(state, _HF_RENAMES)
    converted = _fuse_qkv(converted)
    converted.update({k: state[k] for k in unknown})
    return converted


def config_from_hf(hf: dict) -> ASTConfig:
    """An :class:`ASTConfig` from a Hugging Face AST ``config.json``."""
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"unsupported activation {hf['hidden_act']!r} (AST uses exact GELU)")
    num_labels = len(hf["id2label"]) if "id2label" in hf else hf.get("num_labels", 527)
    eps = hf.get("layer_norm_eps", 1e-12)
    return ASTConfig(
        hidden_size=hf.get("hidden_size", 768),
        depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        mlp_dim=hf.get("intermediate_size", 3072),
        patch_size=hf.get("patch_size", 16),
        fstride=hf.get("frequency_stride", 10),
        tstride=hf.get("time_stride", 10),
        num_mel_bins=hf.get("num_mel_bins", 128),
        input_frames=hf.get("max_length", 1024),
        num_classes=num_labels,
        layer_norm_eps=eps,
        head_norm_eps=eps,
        qkv_bias=hf.get("qkv_bias", True),
    )


def _fit_pos_embed(state: dict, source_cfg: ASTConfig, target_cfg: ASTConfig) -> None:
    pos = state.get("pos_embed")
    if pos is None or pos.shape[1] == target_cfg.num_patches + 2:
        return
    if pos.shape[1] != source_cfg.num_patches + 2:
        raise CheckpointError(
            f"pos_embed has {pos.shape[1] - 2} patches; expected {source_cfg.num_patches} for a "
            f"{source_cfg.grid[0]}x{source_cfg.grid[1]} patch grid"
        )
    state["pos_embed"] = resize_pos_embed(pos, source_cfg.grid, target_cfg.grid)


def load_state_into(model: AST, state: dict, source: str) -> AST:
    """Load converted weights, failing with ONE message that lists every missing key, unexpected
    key and shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        lines = [f"{source} does not fit an AST with {model.cfg}:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model


def _read_weights(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files: say which file, not a traceback
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


def load_original(path: str | os.PathLike, cfg: ASTConfig | None = None,
                  source_cfg: ASTConfig | None = None) -> AST:
    """Load the original AST checkpoint (``audioset_10_10_0.4593.pth`` layout).

    ``cfg`` is the model to build (default: AudioSet AST); ``source_cfg`` the shape the file was
    trained with (default: ``cfg`` with 1024 frames) -- the positional embedding is adapted from
    one to the other by the AST rule.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"AST checkpoint {path} does not exist")
    cfg = cfg or ASTConfig()
    source_cfg = source_cfg or ASTConfig.from_dict({**cfg.to_dict(), "input_frames": 1024})
    raw = _read_weights(path)
    # A bare HF weights file (no config.json beside it) is accepted too.
    is_hf = any(k.startswith(_HF) or k.startswith("classifier.") for k in raw)
    state = convert_hf_state_dict(raw) if is_hf else convert_original_state_dict(raw)
    _fit_pos_embed(state, source_cfg, cfg)
    return load_state_into(AST(cfg), state, str(path))


def load_hf_dir(path: str | os.PathLike, input_frames: int | None = None) -> AST:
    """Load a Hugging Face AST directory (config.json + model.safetensors or pytorch_model.bin)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{path} is not a Hugging Face model directory: it has no config.json")
    try:
        hf = json.loads(config_file.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {config_file}: {exc}") from exc
    source_cfg = config_from_hf(hf)
    cfg = source_cfg if input_frames is None else ASTConfig.from_dict({**source_cfg.to_dict(), "input_frames": input_frames})
    weights = [path / "model.safetensors", path / "pytorch_model.bin"]
    found = next((w for w in weights if w.is_file()), None)
    if found is None:
        raise ModelNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")
    state = convert_hf_state_dict(_read_weights(found))
    _fit_pos_embed(state, source_cfg, cfg)
    return load_state_into(AST(cfg), state, str(found))


def load_ast(source: str | os.PathLike, input_frames: int | None = None) -> AST:
    """Load an AudioSet AST from a .pth/.pt/.bin/.safetensors file, an HF directory or a hub id."""
    path = Path(source)
    if path.is_dir():
        return load_hf_dir(path, input_frames)
    if path.is_file():
        cfg = None if input_frames is None else ASTConfig(input_frames=input_frames)
        return load_original(path, cfg)
    text = str(source)
    if looks_like_hub_id(text):
        return load_hf_dir(resolve_hub(text), input_frames)
    raise ModelNotFoundError(f"AST checkpoint {text} not found: give a .pth file, a model directory or a hub id like {DEFAULT_HUB_ID}")
