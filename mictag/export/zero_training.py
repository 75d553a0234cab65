"""The zero-training instrument tagger: an AudioSet AST with the fixed many-to-one label map."""

from __future__ import annotations

import os

from mictag.errors import ConfigError
from mictag.features import FbankConfig
from mictag.labels import AUDIOSET_NUM_CLASSES
from mictag.model.checkpoints import load_ast
from mictag.model.system import SystemConfig, build_system
from mictag.train.checkpoint import backbone_reference


def zero_training_tagger(ast_source: str | os.PathLike, reduce: str = "max"):
    """(system, metadata extras) for ``ast_source``; refuses a checkpoint without AudioSet's 527 outputs."""
    ast = load_ast(ast_source)
    if ast.cfg.num_classes != AUDIOSET_NUM_CLASSES:
        raise ConfigError(f"{ast_source} has {ast.cfg.num_classes} output classes, not AudioSet's "
                          f"{AUDIOSET_NUM_CLASSES}: the many-to-one map needs an AudioSet-trained AST")
    fbank = FbankConfig(target_frames=ast.cfg.input_frames, num_mel_bins=ast.cfg.num_mel_bins)
    cfg = SystemConfig(ast=ast.cfg, fbank=fbank, reprogrammer="none", mapper="many-to-one",
                       mapper_options={"reduce": reduce})
    system = build_system(cfg, ast=ast).eval()
    return system, {"backbone": backbone_reference(ast_source), "recipe": None,
                    "metrics": None, "zero_training": True}
