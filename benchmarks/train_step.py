"""Training-step benchmark: one reprogramming step (forward through the frozen backbone, backward
into the reprogrammer and mapper, Adam) per window, in fp32 and under the autocast that
`mictag train` uses here, side by side in one run.

    python benchmarks/train_step.py                     # full-size AST + U-Net, batch 2
    python benchmarks/train_step.py --reprogrammer cnn --batch 4
    python benchmarks/train_step.py --tiny              # smoke run

Also reports how far the bf16 step's loss and gradients are from fp32 (same weights, same batch).
Results go to benchmarks/results/train-step-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import save_result  # noqa: E402

from mictag.cpu import cpu_info  # noqa: E402
from mictag.backbones.ast import ASTConfig  # noqa: E402
from mictag.model.system import SystemConfig, build_system  # noqa: E402
from mictag.train.loss import masked_bce  # noqa: E402
from mictag.train.trainer import autocast_dtype  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--reprogrammer", default="unet")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    ast = ASTConfig.tiny() if args.tiny else ASTConfig()
    cfg = SystemConfig(ast=ast, reprogrammer=args.reprogrammer, mapper="head")
    torch.manual_seed(0)
    reference = build_system(cfg)
    x = torch.randn(args.batch, cfg.fbank.target_frames, cfg.fbank.num_mel_bins)
    target = torch.rand(args.batch, len(cfg.labels))
    mask = torch.ones_like(target, dtype=torch.bool)
    device = torch.device("cpu")
    native = autocast_dtype(device, "auto")
    modes = {"fp32": None, "bf16-autocast": torch.bfloat16} if native else {"fp32": None}

    rows, grads, losses = [], {}, {}
    for name, dtype in modes.items():
        model = build_system(cfg)
        model.load_state_dict(reference.state_dict())
        model.train()
        opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-5)

        def step(keep: bool = False):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss = masked_bce(logits.float(), target, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if keep:
                losses[name] = float(loss.detach())
                grads[name] = torch.cat([p.grad.flatten() for p in model.trainable_parameters()]).clone()
            opt.step()

        step(keep=True)  # warm-up, and the step compared across precisions (same weights)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - t0)
        rows.append({"mode": name, "seconds_per_window": best / args.batch, "windows_per_s": args.batch / best})
        print(f"{name:14s} {best / args.batch:7.3f} s/window ({args.batch / best:.2f} windows/s)", flush=True)
    for r in rows:
        r["speedup_vs_fp32"] = rows[0]["seconds_per_window"] / r["seconds_per_window"]
    compared = {}
    if "bf16-autocast" in grads:
        g32, g16 = grads["fp32"], grads["bf16-autocast"]
        compared = {"loss_abs_diff": abs(losses["fp32"] - losses["bf16-autocast"]),
                    "grad_cosine": float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)),
                    "grad_rel_error": float((g32 - g16).norm() / g32.norm())}
        print(f"bf16 vs fp32: |dloss| {compared['loss_abs_diff']:.2e}, gradient cosine {compared['grad_cosine']:.4f}")
    return save_result("train_step" + ("-tiny" if args.tiny else ""), {
        "system": cfg.system_name, "batch": args.batch, "native_bf16": cpu_info().bf16, "rows": rows,
        "bf16_vs_fp32": compared}, args.out)


if __name__ == "__main__":
    main()
