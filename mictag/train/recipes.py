"""Named training recipes; every field can be overridden.

``paper``: batch 8, Adam, lr 5e-5 for 10 epochs then halved every 5, 50 epochs (Sec. 4).
``authors-code``: batch 4, lr 1e-5, x0.85 per epoch from epoch 5 (to 25), 30 epochs, Adam betas
(0.95, 0.999), weight decay 5e-7, SpecAugment frequency 24 / time 96 (hchen605/ast_inst_cls).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from mictag.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str
    batch_size: int
    lr: float
    epochs: int
    schedule: str  # "halve" (paper) or "decay" (authors' code)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    freqm: int = 0  # SpecAugment: max masked mel bins
    timem: int = 0  # SpecAugment: max masked frames
    hard_targets: bool = False  # binarise OpenMIC's soft Y_true at 0.5
    seed: int = 0

    def lr_at(self, epoch: int) -> float:
        """Learning rate during ``epoch`` (0-based)."""
        if self.schedule == "halve":  # constant for 10 epochs, then halved every 5
            return self.lr * 0.5 ** (0 if epoch < 10 else (epoch - 10) // 5 + 1)
        if self.schedule == "decay":  # MultiStepLR(milestones=5..25, gamma=0.85), stepped per epoch
            return self.lr * 0.85 ** min(max(epoch - 4, 0), 21)
        if self.schedule == "constant":
            return self.lr
        raise ConfigError(f"unknown schedule {self.schedule!r}")

    def with_overrides(self, **overrides) -> "Recipe":
        known = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ConfigError(f"unknown recipe field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    "paper": Recipe("paper", batch_size=8, lr=5e-5, epochs=50, schedule="halve"),
    "authors-code": Recipe("authors-code", batch_size=4, lr=1e-5, epochs=30, schedule="decay",
                           betas=(0.95, 0.999), weight_decay=5e-7, freqm=24, timem=96),
}


def get_recipe(name: str, **overrides) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name].with_overrides(**overrides)
