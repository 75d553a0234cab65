"""The zero-training instrument tagger: a frozen backbone with the fixed many-to-one label map
(AudioSet -> OpenMIC for the AST, MagnaTagATune -> OpenMIC for musicnn). Its labels are the
OpenMIC classes the backbone's source classes can express: all 20 for the AST, 8 for musicnn."""

from __future__ import annotations

import os

from mictag.backbones.frozen import backbone_reference, load_backbone, openmic_source_map, source_labels
from mictag.errors import ConfigError
from mictag.model.system import SystemConfig, build_system


def zero_training_tagger(source: str | os.PathLike, reduce: str = "max", backbone: str = "ast"):
    """(system, metadata extras) for ``source``; refuses a backbone whose outputs are not the
    source classes the packaged map is written for."""
    frozen = load_backbone(backbone, source)
    expected = len(source_labels(backbone))
    if frozen.num_classes != expected:
        kind = "an AudioSet-trained AST" if backbone == "ast" else "an MTT musicnn model"
        raise ConfigError(f"{source} has {frozen.num_classes} output classes, not {expected}: "
                          f"the many-to-one map needs {kind}")
    if backbone == "musicnn" and frozen.cfg.tags != "MTT":
        raise ConfigError(f"{source} is a Million Song Dataset model, whose tags are genres and moods: the "
                          f"many-to-one map needs an MTT model (MTT_musicnn or MTT_vgg)")
    labels = tuple(openmic_source_map(backbone))
    cfg = SystemConfig(backbone=backbone, **{backbone: frozen.cfg}, reprogrammer="none", mapper="many-to-one",
                       mapper_options={"reduce": reduce}, labels=labels)
    system = build_system(cfg, backbone=frozen).eval()
    return system, {"backbone": backbone_reference(backbone, source), "recipe": None,
                    "metrics": None, "zero_training": True}
