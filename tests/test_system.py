"""Reprogrammers, mappers and the composed system: Table 1, freezing, shapes, the label map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mictag import frontends as F
from mictag.frontends import FbankConfig
from mictag.labels import AUDIOSET_NUM_CLASSES, OPENMIC_LABELS, audioset_labels, openmic_audioset_map
from mictag.backbones.ast import ASTConfig
from mictag.model.mappers import ManyToOneMapper
from mictag.model.reprogram import CNNReprogrammer, NoiseReprogrammer, UNetReprogrammer
from mictag.model.system import SystemConfig, build_system, parameter_table

TINY_AST = ASTConfig.tiny()
TINY_FBANK = FbankConfig(target_frames=TINY_AST.input_frames)


def tiny(**settings) -> SystemConfig:
    return SystemConfig(ast=TINY_AST, fbank=TINY_FBANK, **settings)


def test_table1_trainable_parameter_counts():
    """The paper's Table 1 under the authors'-code settings (768 -> 20 head on pooled tokens)."""
    counts = dict(parameter_table())
    assert counts["AST-BS"] == 16_916
    assert counts["AST-NRP"] == 147_988
    assert counts["AST-CNNRP"] == 16_936
    assert counts["AST-URP"] == 18_201
    assert 15_000 <= counts["CNN-BS"] <= 20_000  # "roughly the same" as CNNRP / URP
    # Fine-tuning trains the whole backbone (paper: 87.873 M with DeiT's unused ImageNet heads).
    assert 86_000_000 < counts["AST-TL"] < 88_000_000


def test_fc_mapper_counts_follow_the_paper_text():
    counts = dict(parameter_table(mapper="fc"))
    assert counts["AST-BS"] == AUDIOSET_NUM_CLASSES * 20 + 20


@pytest.mark.parametrize("reprogrammer", ["none", "noise", "cnn", "unet"])
@pytest.mark.parametrize("mapper", ["head", "fc", "many-to-one"])
def test_frozen_backbone_stays_frozen_and_trainables_move(reprogrammer, mapper):
    torch.manual_seed(0)
    model = build_system(tiny(reprogrammer=reprogrammer, mapper=mapper))
    model.train()
    assert not model.backbone.training  # frozen AST never enters training mode
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if mapper == "many-to-one" and reprogrammer == "none":
        assert not trainable  # the zero-training tagger has nothing to train
        return
    x = torch.randn(4, TINY_AST.input_frames, TINY_AST.num_mel_bins)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.rand(4, 20))
    loss.backward()
    for name, p in model.backbone.named_parameters():
        assert p.grad is None, f"frozen {name} received a gradient"
    opt.step()
    for name, p in model.backbone.named_parameters():
        assert torch.equal(p, frozen[name]), f"frozen {name} changed"
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert moved, "no trainable parameter moved"


def test_finetune_baseline_trains_the_backbone():
    model = build_system(tiny(baseline="finetune"))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.blocks.0.attn.qkv.weight" in names and "backbone.patch_embed.weight" in names
    assert "backbone.head.weight" not in names  # not on the path with the head mapper


def test_cnn_baseline_has_no_backbone_and_gives_logits():
    model = build_system(tiny(baseline="cnn-bs"))
    assert not hasattr(model, "ast")
    out = model(torch.randn(2, TINY_AST.input_frames, 128))
    assert out.shape == (2, 20)


def test_reprogrammers_keep_the_input_shape():
    x = torch.randn(2, 1024, 128)
    for module in (NoiseReprogrammer(1024, 128), CNNReprogrammer(1024, 128), UNetReprogrammer(1024, 128)):
        assert module(x).shape == x.shape
    odd = torch.randn(2, 187, 96)  # shapes not divisible by 8 (other backbones)
    assert UNetReprogrammer(187, 96)(odd).shape == odd.shape


def test_identity_initialised_reprogrammers_are_identities():
    x = torch.randn(2, 64, 32)
    assert torch.allclose(CNNReprogrammer(64, 32, init="identity")(x), x, atol=1e-6)
    assert torch.equal(NoiseReprogrammer(64, 32, init="zeros")(x), x)


def test_unet_frozen_option_reproduces_the_authors_code():
    net = UNetReprogrammer(64, 32, trainable=False)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 0
    assert sum(p.numel() for p in net.parameters()) == 1_285
    assert net(torch.randn(2, 64, 32)).min() >= 0  # final BN + ReLU, as in the code


def test_label_map_covers_every_class_with_the_right_audioset_names():
    table = openmic_audioset_map()
    names = audioset_labels()
    assert tuple(table) == OPENMIC_LABELS
    assert names[153] == "Piano" and 153 in table["piano"]
    assert names[191].startswith("Violin") and table["violin"] == (191,)
    assert {names[i] for i in table["voice"]} >= {"Singing", "Choir"}


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_many_to_one_reduces_source_probabilities(reduce):
    torch.manual_seed(1)
    table = openmic_audioset_map()
    mapper = ManyToOneMapper(AUDIOSET_NUM_CLASSES, [table[label] for label in OPENMIC_LABELS], reduce=reduce)
    logits = torch.randn(3, AUDIOSET_NUM_CLASSES) * 3
    probs = torch.sigmoid(mapper(logits))
    src = torch.sigmoid(logits)
    for t, label in enumerate(OPENMIC_LABELS):
        cols = src[:, list(table[label])]
        expect = cols.max(dim=1).values if reduce == "max" else cols.mean(dim=1)
        torch.testing.assert_close(probs[:, t], expect, atol=1e-5, rtol=1e-5)


def test_waveform_system_equals_fbank_system_on_the_same_input():
    torch.manual_seed(2)
    cfg = tiny(reprogrammer="cnn", mapper="head")
    on_fbank = build_system(cfg).eval()
    on_wave = build_system(cfg, with_fbank=True).eval()
    on_wave.load_state_dict(on_fbank.state_dict())
    rng = np.random.default_rng(0)
    w = (0.2 * rng.standard_normal((2, TINY_FBANK.window_samples))).astype(np.float32)
    valid = [TINY_FBANK.window_samples, 9000]
    fb = np.stack([F.model_input(w[i, : valid[i]], TINY_FBANK) for i in range(2)])
    with torch.no_grad():
        a = on_wave(torch.from_numpy(w), torch.tensor(valid))
        b = on_fbank(torch.from_numpy(fb))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_system_config_round_trips_through_a_dict():
    cfg = tiny(reprogrammer="unet", reprogrammer_options={"trainable": False}, mapper="many-to-one",
               mapper_options={"reduce": "mean"}, normalize_input=False)
    again = SystemConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.system_name == "AST-URP"


def test_mismatched_fbank_and_ast_shapes_are_refused():
    with pytest.raises(ValueError, match="frames"):
        SystemConfig(ast=TINY_AST, fbank=FbankConfig())


def test_musicnn_pool_features_feed_the_mapper_and_keep_the_backbone_output():
    """features="pool": the mapper reads the 1,506 pooled mid-end features; the backbone's own
    logits (forward_head on them) are the dense model's, exactly; the default stays out of the
    record so v1 records are unchanged."""
    from mictag.backbones.musicnn import MusicnnConfig, build_musicnn

    torch.manual_seed(0)
    dense = build_musicnn(MusicnnConfig()).eval()
    pool = build_musicnn(MusicnnConfig(features="pool")).eval()
    pool.load_state_dict(dense.state_dict())
    x = torch.randn(3, 187, 96)
    with torch.inference_mode():
        features = pool.forward_features(x)
        assert features.shape == (3, 1506) and pool.hidden_size == 1506
        assert torch.allclose(pool.forward_head(features), dense(x), atol=1e-5)
        assert torch.allclose(pool(x), dense(x), atol=1e-5)
    assert "features" not in MusicnnConfig().to_dict()
    assert MusicnnConfig.from_dict(MusicnnConfig(features="pool").to_dict()).features == "pool"
    cfg = SystemConfig(backbone="musicnn", musicnn=MusicnnConfig(features="pool"), mapper="mlp",
                       mapper_options={"hidden": 64})
    model = build_system(cfg)
    assert model.num_trainable() == 2 * 1506 + 1506 * 64 + 64 + 64 * 20 + 20
    assert SystemConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="pool"):
        MusicnnConfig(architecture="vgg", features="pool")
