"""AST checkpoint loading, checked against transformers' ASTForAudioClassification.

Every weight of a tiny Hugging Face AST is randomised (fixed seed), so any wrong key mapping,
qkv order, LayerNorm eps or pooling shows as a logits mismatch. The original-layout checkpoint
is built here by writing the HF -> original mapping out by hand, independently of mictag.
Nothing touches the network: every test runs with sockets disabled.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from mictag.errors import CheckpointError, ModelNotFoundError  # noqa: E402
from mictag.backbones import ast_checkpoints as checkpoints  # noqa: E402
from mictag.backbones.ast import AST, ASTConfig  # noqa: E402
from mictag.backbones.ast_checkpoints import load_ast, load_hf_dir, load_original  # noqa: E402
from mictag.backbones.ast_sources import ORIGINAL_FILENAME, resolve_hub  # noqa: E402

ATOL = 1e-4
EPS = 1e-6
HIDDEN, DEPTH, HEADS, MLP, MEL, LABELS = 32, 2, 2, 64, 128, 527
HF = "audio_spectrogram_transformer."


# ---------------------------------------------------------------- helpers


def hf_config(max_length: int = 128) -> "transformers.ASTConfig":
    return transformers.ASTConfig(
        hidden_size=HIDDEN, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=MLP,
        max_length=max_length, num_mel_bins=MEL, num_labels=LABELS, layer_norm_eps=EPS,
    )


def make_hf(max_length: int = 128, seed: int = 0) -> "transformers.ASTForAudioClassification":
    """A tiny HF AST with EVERY parameter randomised (LayerNorm gains around 1)."""
    model = transformers.ASTForAudioClassification._from_config(
        hf_config(max_length), attn_implementation="eager"
    )
    g = torch.Generator().manual_seed(seed)
    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "layernorm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.05 * noise + 0.01)
            names.append(name)
    assert not list(model.buffers()), "a buffer would escape randomisation"
    assert len(names) == 3 + 2 + DEPTH * 16 + 2 + 4  # tokens+pos, patch, blocks, norm, head
    return model.eval()


def tiny_cfg(**overrides) -> ASTConfig:
    """Our config matching hf_config(); both eps set to the HF one."""
    base = dict(hidden_size=HIDDEN, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, num_mel_bins=MEL,
                input_frames=128, num_classes=LABELS, layer_norm_eps=EPS, head_norm_eps=EPS)
    base.update(overrides)
    return ASTConfig(**base)


def inputs(frames: int, seed: int = 1) -> torch.Tensor:
    """(3, frames, MEL): noise on a per-example spectral profile, so the examples differ clearly."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(3, frames, MEL, generator=g) + torch.randn(3, 1, MEL, generator=g)


@torch.no_grad()
def hf_logits(model, x):
    return model(input_values=x).logits


@torch.no_grad()
def our_logits(model: AST, x):
    model.eval()
    return model(x)


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs difference {err:.3g} > {atol}"


def hf_disk_to_original(hf: dict, depth: int = DEPTH, prefix: str = "module.") -> dict:
    """HF keys as save_pretrained writes them -> the original AST (timm DeiT in ``v``) layout.

    Written out by hand (not with mictag's tables). Every HF tensor must be consumed exactly once.
    """
    hf = dict(hf)
    out = {}

    def take(k):
        return hf.pop(k)

    out["v.cls_token"] = take(f"{HF}embeddings.cls_token")
    out["v.dist_token"] = take(f"{HF}embeddings.distillation_token")
    out["v.pos_embed"] = take(f"{HF}embeddings.position_embeddings")
    for kind in ("weight", "bias"):
        out[f"v.patch_embed.proj.{kind}"] = take(f"{HF}embeddings.patch_embeddings.projection.{kind}")
        out[f"v.norm.{kind}"] = take(f"{HF}layernorm.{kind}")
        out[f"mlp_head.0.{kind}"] = take(f"classifier.layernorm.{kind}")
        out[f"mlp_head.1.{kind}"] = take(f"classifier.dense.{kind}")
        for i in range(depth):
            h, o = f"{HF}encoder.layer.{i}.", f"v.blocks.{i}."
            out[f"{o}attn.qkv.{kind}"] = torch.cat(
                [take(f"{h}attention.attention.{n}.{kind}") for n in ("query", "key", "value")], dim=0
            )
            out[f"{o}attn.proj.{kind}"] = take(f"{h}attention.output.dense.{kind}")
            out[f"{o}mlp.fc1.{kind}"] = take(f"{h}intermediate.dense.{kind}")
            out[f"{o}mlp.fc2.{kind}"] = take(f"{h}output.dense.{kind}")
            out[f"{o}norm1.{kind}"] = take(f"{h}layernorm_before.{kind}")
            out[f"{o}norm2.{kind}"] = take(f"{h}layernorm_after.{kind}")
    assert not hf, f"HF tensors left unmapped: {sorted(hf)}"
    # DeiT's own ImageNet heads ship in the original file and must be ignored.
    g = torch.Generator().manual_seed(7)
    d = out["v.cls_token"].shape[-1]
    out["v.head.weight"] = torch.randn(1000, d, generator=g)
    out["v.head.bias"] = torch.randn(1000, generator=g)
    out["v.head_dist.weight"] = torch.randn(1000, d, generator=g)
    out["v.head_dist.bias"] = torch.randn(1000, generator=g)
    return {prefix + k: v for k, v in out.items()}


def assert_single_error(exc: BaseException) -> None:
    """One error carrying the whole diagnosis, not raised while handling another one."""
    assert exc.__cause__ is None and exc.__context__ is None
    assert "Traceback" not in str(exc)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test loudly."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert not attempts, f"test tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def hf_model():
    return make_hf(128, seed=0)


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_ast")
    hf_model.save_pretrained(d)
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    return d


@pytest.fixture(scope="module")
def hf_disk_state(hf_dir):
    """The HF state dict as written on disk (ViT-style encoder.layer.N.attention.attention.* names)."""
    state = safetensors_torch.load_file(str(hf_dir / "model.safetensors"))
    assert f"{HF}encoder.layer.0.attention.attention.query.weight" in state
    return state


@pytest.fixture(scope="module")
def x128():
    return inputs(128)


@pytest.fixture(scope="module")
def ref128(hf_model, x128):
    return hf_logits(hf_model, x128)


@pytest.fixture()
def original_pth(hf_disk_state, tmp_path):
    path = tmp_path / ORIGINAL_FILENAME
    torch.save(hf_disk_to_original(hf_disk_state), path)
    return path


# ---------------------------------------------------------------- 1. HF directory parity


def test_hf_dir_logits_and_embedding_match_transformers(hf_model, hf_dir, x128, ref128):
    ours = load_hf_dir(hf_dir)
    assert ours.cfg == tiny_cfg()  # config.json read: sizes, 527 labels, eps for blocks and head
    assert_close(our_logits(ours, x128), ref128)
    with torch.no_grad():
        pooled_ref = hf_model.audio_spectrogram_transformer(input_values=x128).pooler_output
        assert_close(ours.eval().forward_features(x128), pooled_ref)
    # The logits vary across the batch and the classes far beyond ATOL: the comparison is not vacuous.
    assert ref128.std(dim=0).median() > 100 * ATOL and ref128.std(dim=1).min() > 100 * ATOL


def test_load_ast_routes_a_directory_to_the_hf_loader(hf_dir, x128, ref128):
    assert_close(our_logits(load_ast(str(hf_dir)), x128), ref128)
    assert_close(our_logits(load_ast(hf_dir), x128), ref128)  # a Path works too


def test_bare_hf_weight_files_load_with_an_explicit_config(hf_model, hf_dir, tmp_path, x128, ref128):
    """load_original also accepts a bare HF weights file: both the on-disk names (safetensors)
    and transformers 5's in-memory names (layers.N.attention.q_proj, mlp.fc1, ...)."""
    assert_close(our_logits(load_original(hf_dir / "model.safetensors", tiny_cfg()), x128), ref128)
    in_memory = hf_model.state_dict()
    assert any(".q_proj." in k for k in in_memory), "transformers no longer uses q_proj in memory"
    path = tmp_path / "hf_in_memory.bin"
    torch.save(in_memory, path)
    assert_close(our_logits(load_original(path, tiny_cfg()), x128), ref128)


# ---------------------------------------------------------------- 2. original-layout parity


@pytest.mark.parametrize("layout", ["dataparallel", "no_prefix", "wrapped"])
def test_original_checkpoint_matches_transformers(layout, hf_disk_state, tmp_path, x128, ref128):
    state = hf_disk_to_original(hf_disk_state, prefix="" if layout == "no_prefix" else "module.")
    path = tmp_path / ORIGINAL_FILENAME
    torch.save({"state_dict": state} if layout == "wrapped" else state, path)
    ours = load_original(path, tiny_cfg())
    assert_close(our_logits(ours, x128), ref128)


def test_original_loader_is_sensitive_to_the_mapping(hf_disk_state, tmp_path, x128, ref128):
    """Negative controls: a key/query swap or a norm1/norm2 swap loads (same shapes) but must
    change the logits far beyond the tolerance, so the parity tests above can catch such bugs."""
    good = hf_disk_to_original(hf_disk_state)
    d = HIDDEN
    swapped_qk = dict(good)
    w = good["module.v.blocks.0.attn.qkv.weight"]
    swapped_qk["module.v.blocks.0.attn.qkv.weight"] = torch.cat([w[d:2 * d], w[:d], w[2 * d:]])
    swapped_norm = dict(good)
    for kind in ("weight", "bias"):
        a, b = f"module.v.blocks.1.norm1.{kind}", f"module.v.blocks.1.norm2.{kind}"
        swapped_norm[a], swapped_norm[b] = good[b], good[a]
    for i, bad in enumerate((swapped_qk, swapped_norm)):
        path = tmp_path / f"bad{i}.pth"
        torch.save(bad, path)
        diff = (our_logits(load_original(path, tiny_cfg()), x128) - ref128).abs().max().item()
        assert diff > 100 * ATOL


def test_original_head_norm_uses_head_norm_eps(original_pth, x128, ref128):
    """The head LayerNorm's eps is a separate setting: a large one must change the logits."""
    right = our_logits(load_original(original_pth, tiny_cfg()), x128)
    assert_close(right, ref128)
    wrong = our_logits(load_original(original_pth, tiny_cfg(head_norm_eps=1.0)), x128)
    assert (wrong - ref128).abs().max() > 100 * ATOL


@pytest.fixture(scope="module")
def hf_model_1024():
    return make_hf(1024, seed=3)


def test_load_ast_original_file_route_with_audioset_grid(hf_model_1024, tmp_path, monkeypatch):
    """load_ast(file) builds the AudioSet-shaped AST (1024 frames, 12x101 grid) and adapts the
    positional embedding to input_frames. Real AudioSet sizes are too slow for a unit test, so
    the defaults of ASTConfig are shrunk (widths only) in the loader's namespace."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class ShrunkAudioSetConfig(ASTConfig):
        hidden_size: int = HIDDEN
        depth: int = DEPTH
        num_heads: int = HEADS
        mlp_dim: int = MLP
        layer_norm_eps: float = EPS
        head_norm_eps: float = EPS

    monkeypatch.setattr(checkpoints, "ASTConfig", ShrunkAudioSetConfig)
    d = tmp_path / "hf1024"
    hf_model_1024.save_pretrained(d)
    path = tmp_path / ORIGINAL_FILENAME
    torch.save(hf_disk_to_original(safetensors_torch.load_file(str(d / "model.safetensors"))), path)

    x = inputs(1024, seed=5)
    full = load_ast(str(path))
    assert full.cfg.grid == (12, 101)
    assert_close(our_logits(full, x), hf_logits(hf_model_1024, x))

    cropped = load_ast(str(path), input_frames=512)
    assert cropped.cfg.grid == (12, 50)
    pos = hf_model_1024.audio_spectrogram_transformer.embeddings.position_embeddings.detach()
    start = 101 // 2 - 50 // 2  # the original AST's 50 - int(t_dim / 2)
    idx = [2 + f * 101 + t for f in range(12) for t in range(start, start + 50)]
    assert_close(cropped.pos_embed.detach(), torch.cat([pos[:, :2], pos[:, idx]], dim=1), atol=0)
    assert our_logits(cropped, inputs(512)).shape == (3, LABELS)


# ---------------------------------------------------------------- 3. clear errors


def _save(state: dict, tmp_path: Path, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_missing_key_is_named(hf_disk_state, tmp_path):
    state = hf_disk_to_original(hf_disk_state)
    del state["module.v.blocks.1.mlp.fc1.bias"]
    path = _save(state, tmp_path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks\.1\.mlp\.fc1\.bias") as info:
        load_original(path, tiny_cfg())
    assert_single_error(info.value)
    msg = str(info.value)
    assert str(path) in msg
    assert "unexpected keys" not in msg and "shape mismatches" not in msg


def test_shape_mismatch_names_key_and_both_shapes(hf_disk_state, tmp_path):
    state = hf_disk_to_original(hf_disk_state)
    state["module.v.blocks.0.attn.proj.weight"] = torch.zeros(HIDDEN, HIDDEN // 2)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\)") as info:
        load_original(_save(state, tmp_path), tiny_cfg())
    assert_single_error(info.value)
    msg = str(info.value)
    assert f"blocks.0.attn.proj.weight: checkpoint ({HIDDEN}, {HIDDEN // 2}) vs model ({HIDDEN}, {HIDDEN})" in msg
    assert "missing keys" not in msg and "unexpected keys" not in msg


def test_unexpected_key_is_listed(hf_disk_state, tmp_path):
    state = hf_disk_to_original(hf_disk_state)
    state["module.v.blocks.0.attn.rel_pos"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): blocks\.0\.attn\.rel_pos") as info:
        load_original(_save(state, tmp_path), tiny_cfg())
    assert_single_error(info.value)
    assert "missing keys" not in str(info.value)


def test_all_problems_are_reported_in_one_error(hf_disk_state, tmp_path):
    state = hf_disk_to_original(hf_disk_state)
    del state["module.v.norm.weight"]
    del state["module.mlp_head.1.bias"]
    state["module.mlp_head.1.weight"] = torch.zeros(10, HIDDEN)
    state["module.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_original(_save(state, tmp_path), tiny_cfg())
    assert_single_error(info.value)
    msg = str(info.value)
    assert "missing keys (2): head.bias, norm.weight" in msg
    assert "unexpected keys (1): extra" in msg
    assert f"shape mismatches (1): head.weight: checkpoint (10, {HIDDEN}) vs model ({LABELS}, {HIDDEN})" in msg


def test_incomplete_hf_attention_is_a_checkpoint_error(hf_dir, tmp_path):
    state = safetensors_torch.load_file(str(hf_dir / "model.safetensors"))
    del state[f"{HF}encoder.layer.1.attention.attention.value.bias"]
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    safetensors_torch.save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn: no value bias"):
        load_hf_dir(d)


def test_missing_paths_raise_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_original(tmp_path / "nope.pth", tiny_cfg())
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_ast(str(tmp_path / "nope.pth"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config().to_dict()))
    with pytest.raises(ModelNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        load_hf_dir(tmp_path)


def test_unreadable_files_raise_checkpoint_error_naming_the_file(tmp_path, hf_dir):
    junk = tmp_path / ORIGINAL_FILENAME
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        load_original(junk, tiny_cfg())
    assert str(junk) in str(info.value)
    assert "Traceback" not in str(info.value)

    not_a_state_dict = _save([torch.zeros(2)], tmp_path, "list.pth")
    with pytest.raises(CheckpointError, match="is not a state dict of tensors") as info:
        load_original(not_a_state_dict, tiny_cfg())
    assert str(not_a_state_dict) in str(info.value)

    d = tmp_path / "junk_dir"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    (d / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        load_hf_dir(d)
    assert str(d / "model.safetensors") in str(info.value)

    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*config.json"):
        load_hf_dir(d)


# ---------------------------------------------------------------- 4. positional embedding rule


def _hf_at_length(hf_model, frames: int, pos: torch.Tensor):
    """A reference HF model for `frames` frames: same weights, the given position embeddings."""
    ref = transformers.ASTForAudioClassification._from_config(hf_config(frames), attn_implementation="eager")
    state = dict(hf_model.state_dict())
    state[f"{HF}embeddings.position_embeddings"] = pos
    ref.load_state_dict(state)
    return ref.eval()


def test_fewer_frames_centre_crop_time_axis(hf_model, hf_dir):
    pos = hf_model.audio_spectrogram_transformer.embeddings.position_embeddings.detach()
    f, t_old, t_new = 12, 12, 5  # 128 frames -> 12 time patches; 64 frames -> 5
    start = t_old // 2 - t_new // 2
    assert start == 4
    idx = [2 + fi * t_old + ti for fi in range(f) for ti in range(start, start + t_new)]
    expected = torch.cat([pos[:, :2], pos[:, idx]], dim=1)

    ours = load_hf_dir(hf_dir, input_frames=64)
    assert ours.cfg.input_frames == 64 and ours.cfg.grid == (f, t_new)
    assert_close(ours.pos_embed.detach(), expected, atol=0)
    x = inputs(64, seed=2)
    assert_close(our_logits(ours, x), hf_logits(_hf_at_length(hf_model, 64, expected), x))
    assert_close(our_logits(load_ast(hf_dir, input_frames=64), x), our_logits(ours, x), atol=0)


def test_more_frames_interpolate_time_axis_bilinearly(hf_model, hf_dir):
    pos = hf_model.audio_spectrogram_transformer.embeddings.position_embeddings.detach()
    f, t_old, t_new = 12, 12, 25  # 256 frames -> 25 time patches
    grid = torch.empty(1, HIDDEN, f, t_old)
    for fi in range(f):
        for ti in range(t_old):
            grid[0, :, fi, ti] = pos[0, 2 + fi * t_old + ti]
    wide = torch.nn.functional.interpolate(grid, size=(f, t_new), mode="bilinear")
    patches = torch.stack([wide[0, :, fi, ti] for fi in range(f) for ti in range(t_new)])[None]
    expected = torch.cat([pos[:, :2], patches], dim=1)

    ours = load_hf_dir(hf_dir, input_frames=256)
    assert ours.cfg.grid == (f, t_new)
    assert_close(ours.pos_embed.detach(), expected, atol=1e-6)
    # the token embeddings are kept as they are
    assert torch.equal(ours.pos_embed.detach()[:, :2], pos[:, :2])
    x = inputs(256, seed=4)
    assert_close(our_logits(ours, x), hf_logits(_hf_at_length(hf_model, 256, expected), x))


def test_pos_embed_of_unknown_grid_is_a_checkpoint_error(hf_disk_state, tmp_path):
    state = hf_disk_to_original(hf_disk_state)
    state["module.v.pos_embed"] = state["module.v.pos_embed"][:, :-12]  # 11 time columns, not 12
    path = _save(state, tmp_path)
    with pytest.raises(CheckpointError, match="pos_embed has 132 patches; expected 144 for a 12x12"):
        load_original(path, tiny_cfg(input_frames=64), source_cfg=tiny_cfg())


# ---------------------------------------------------------------- 5. Hugging Face hub cache, offline


def _populate_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> str:
    """Lay files out as huggingface_hub does: blobs/<sha256>, snapshots/<commit>/<name> symlinks,
    refs/main holding the commit hash (no trailing newline)."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return commit


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """An offline hub cache in tmp_path. huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE into
    `huggingface_hub.constants` at import (transformers has imported it by now), so setting the
    environment alone is not enough: the constants are patched too."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_id_loads_from_offline_cache(offline_hub, hf_dir, x128, ref128):
    commit = _populate_hub_cache(
        offline_hub, "testorg/tiny-ast",
        {"config.json": hf_dir / "config.json", "model.safetensors": hf_dir / "model.safetensors"},
    )
    resolved = resolve_hub("testorg/tiny-ast")
    assert resolved.name == commit and resolved.is_relative_to(offline_hub.resolve())
    assert_close(our_logits(load_ast("testorg/tiny-ast"), x128), ref128)


def test_absent_hub_id_offline_names_hf_hub_offline(offline_hub):
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE") as info:
        load_ast("testorg/absent")
    assert "testorg/absent" in str(info.value)


def test_missing_relative_checkpoint_path_is_not_sent_to_the_hub(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        raise OSError("no hub in tests")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_ast(f"checkpoints/{ORIGINAL_FILENAME}")
    assert not calls


# ---------------------------------------------------------------- resize rule, frequency axis


@pytest.mark.parametrize("new_f", [2, 7])
def test_resize_pos_embed_frequency_axis(new_f):
    """Same AST rule along frequency: centre crop at old//2 - new//2, else bilinear."""
    from mictag.backbones.ast import resize_pos_embed

    f0, t, d = 4, 6, 3
    pos = torch.randn(1, 2 + f0 * t, d, generator=torch.Generator().manual_seed(9))
    grid = torch.stack([torch.stack([pos[0, 2 + fi * t + ti] for ti in range(t)], dim=-1)
                        for fi in range(f0)], dim=-2)[None]  # (1, D, F, T)
    if new_f <= f0:
        s = f0 // 2 - new_f // 2
        new = grid[:, :, s:s + new_f]
    else:
        new = torch.nn.functional.interpolate(grid, size=(new_f, t), mode="bilinear")
    expected = torch.cat([pos[:, :2], torch.stack([new[0, :, fi, ti] for fi in range(new_f) for ti in range(t)])[None]], 1)
    assert_close(resize_pos_embed(pos, (f0, t), (new_f, t)), expected, atol=1e-6)
