"""Binary cross-entropy over the labelled entries only (OpenMIC's missing labels are masked)."""

from __future__ import annotations

import torch


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """Mean BCE-with-logits over entries where ``mask`` is True; masked entries contribute
    nothing, not even to the gradient. ``hard`` binarises soft targets at 0.5 first."""
    mask = mask.to(torch.bool)
    if hard:
        target = (target >= 0.5).to(logits.dtype)
    # Select, don't multiply: a masked entry's value (even inf/nan) must not touch the graph.
    picked_logits, picked_target = logits[mask], target[mask].to(logits.dtype)
    if picked_logits.numel() == 0:
        return logits.sum() * 0.0
    return torch.nn.functional.binary_cross_entropy_with_logits(picked_logits, picked_target)
