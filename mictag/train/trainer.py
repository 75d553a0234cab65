"""Training a reprogrammed system against the frozen AST, with validation-based model selection,
per-class threshold tuning, resumable epochs and repeated runs."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mictag.digest import file_digest
from mictag.errors import ConfigError
from mictag.model.fbank import FrameFinish
from mictag.model.system import SystemConfig, build_system
from mictag.paths import mictag_home
from mictag.train.cache import FbankCache, OutputCache
from mictag.backbones.frozen import backbone_reference, load_backbone
from mictag.train.checkpoint import save_model, trained_state
from mictag.train.data import Example, Splits, open_dataset
from mictag.train.loss import masked_bce
from mictag.train.metrics import Report, evaluate, tune_thresholds
from mictag.train.recipes import Recipe

Progress = Callable[[str], None]


@dataclass
class TrainSpec:
    """What to train. ``source`` is the frozen backbone's: an AST checkpoint (file, directory or
    hub id), or a musicnn model name or converted weights file."""

    data: str
    source: str | None
    out: str
    recipe: Recipe
    fmt: str = "auto"
    reprogrammer: str = "none"
    reprogrammer_options: dict = field(default_factory=dict)
    mapper: str = "head"
    mapper_options: dict = field(default_factory=dict)
    baseline: str | None = None
    normalize_input: bool = True
    val_fraction: float = 0.15
    cache_dir: str | None = None
    device: str = "auto"
    backbone: str = "ast"
    # Mixed precision: "auto" (CUDA's autocast on a GPU; bf16 autocast on a CPU with native bf16),
    # "bf16", or "fp32" (none). The trained weights stay fp32 either way.
    precision: str = "auto"


@dataclass
class Tensors:
    """A split as arrays: the cached frames are memory-mapped per file, gathered per batch."""

    frames: list[np.ndarray]
    valid: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    digests: list[str]

    def __len__(self) -> int:
        return len(self.frames)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        frames = torch.from_numpy(np.stack([np.asarray(self.frames[i]) for i in idx]))
        return (frames, torch.from_numpy(self.valid[idx]), torch.from_numpy(self.target[idx]),
                torch.from_numpy(self.mask[idx]))


def load_split(examples: list[Example], cache: FbankCache, progress: Progress | None = None) -> Tensors:
    frames, valid, digests = [], [], []
    for n, ex in enumerate(examples):
        digest = file_digest(ex.path)
        f, v = cache.get(ex.path, digest)
        frames.append(f)
        valid.append(v)
        digests.append(digest)
        if progress and (n + 1) % 200 == 0:
            progress(f"features {n + 1}/{len(examples)}")
    k = len(examples[0].target) if examples else 0
    return Tensors(frames, np.asarray(valid, np.int64),
                   np.stack([e.target for e in examples]) if examples else np.zeros((0, k), np.float32),
                   np.stack([e.mask for e in examples]) if examples else np.zeros((0, k), bool), digests)


def spec_augment(frames: torch.Tensor, freqm: int, timem: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one random band of < freqm mel bins and one span of < timem frames per item (raw
    fbank domain, before normalisation, as the authors' data loader did)."""
    if not freqm and not timem:
        return frames
    frames = frames.clone()
    b, t, f = frames.shape
    for i in range(b):
        for size, width, axis in ((f, freqm, 2), (t, timem, 1)):
            if width:
                w = int(torch.randint(0, min(width, size), (1,), generator=gen))
                s = int(torch.randint(0, size - w + 1, (1,), generator=gen))
                if axis == 2:
                    frames[i, :, s : s + w] = 0
                else:
                    frames[i, s : s + w, :] = 0
    return frames


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype training autocasts to on ``device``, or None for plain fp32. On a CPU bf16 only
    where it is native (AMX-BF16, AVX512-BF16): emulated bf16 is far slower than fp32."""
    from mictag.cpu import cpu_info

    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"unknown training precision {precision!r}; choose auto, bf16 or fp32")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "bf16" or cpu_info().bf16:
        return torch.bfloat16
    return None


class Trainer:
    """One run: build, (resume,) train, select on validation, tune thresholds, test, save."""

    def __init__(self, spec: TrainSpec, splits: Splits, progress: Progress | None = None):
        self.spec, self.splits = spec, splits
        self.progress = progress or (lambda msg: None)
        self.device = pick_device(spec.device)
        self.out = Path(spec.out)
        self.backbone = None
        frozen = None
        shape = {}
        if spec.baseline != "cnn-bs":
            if not spec.source:
                raise ConfigError("training on the AST needs its checkpoint: pass --ast (a .pth, a model directory or a hub id)")
            frozen = load_backbone(spec.backbone, spec.source)
            self.backbone = backbone_reference(spec.backbone, spec.source)
            shape = {spec.backbone: frozen.cfg}
        try:
            self.cfg = SystemConfig(
                backbone=spec.backbone, **shape, reprogrammer=spec.reprogrammer,
                reprogrammer_options=spec.reprogrammer_options, mapper=spec.mapper,
                mapper_options=spec.mapper_options, labels=splits.labels,
                normalize_input=spec.normalize_input, baseline=spec.baseline)
            torch.manual_seed(spec.recipe.seed)
            self.model = build_system(self.cfg, backbone=frozen).to(self.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        fbank = self.cfg.fbank
        self.finish = FrameFinish(fbank, normalize=spec.normalize_input).to(self.device)
        cache_root = Path(spec.cache_dir) if spec.cache_dir else mictag_home() / "cache"
        self.cache_root = cache_root
        self.fbank_cache = FbankCache(cache_root, fbank)
        # Nothing before the mapper trains: cache the frozen AST's outputs per file.
        self.fixed_input = spec.reprogrammer == "none" and spec.baseline is None
        self.amp_dtype = autocast_dtype(self.device, spec.precision)
        self.amp = self.amp_dtype is not None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    # -- data -----------------------------------------------------------------------------
    def _inputs(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.finish(frames.to(self.device), valid.to(self.device))

    def _backbone_outputs(self, data: Tensors) -> dict[str, np.ndarray]:
        """Pooled embeddings and source-class logits of every item, through the output cache."""
        key = {"backbone": self.backbone, "features": self.cfg.fbank.to_dict(),
               "normalize": self.spec.normalize_input}
        cache = OutputCache(self.cache_root, key)
        emb, logits = [None] * len(data), [None] * len(data)
        todo = []
        for i, d in enumerate(data.digests):
            hit = cache.load(d)
            if hit is None:
                todo.append(i)
            else:
                emb[i], logits[i] = hit["embedding"], hit["logits"]
        backbone = self.model.backbone
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(todo), 16):
                idx = np.asarray(todo[start : start + 16])
                frames, valid, _, _ = data.batch(idx)
                pooled = backbone.forward_features(self._inputs(frames, valid))
                out = backbone.forward_head(pooled)
                for j, i in enumerate(idx):
                    emb[i], logits[i] = pooled[j].float().cpu().numpy(), out[j].float().cpu().numpy()
                    cache.save(data.digests[i], {"embedding": emb[i], "logits": logits[i]})
        return {"embedding": np.stack(emb), "logits": np.stack(logits)}

    def _mapper_input(self, cached: dict[str, np.ndarray]) -> np.ndarray:
        return cached["embedding"] if self.model.mapper.source == "pooled" else cached["logits"]

    # -- scoring --------------------------------------------------------------------------
    def scores(self, data: Tensors, cached: dict | None = None) -> np.ndarray:
        """Sigmoid probabilities (items, labels)."""
        self.model.eval()
        out = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(data), 16):
                idx = np.arange(start, min(start + 16, len(data)))
                if cached is not None:
                    logits = self.model.mapper(torch.from_numpy(self._mapper_input(cached)[idx]).to(self.device))
                else:
                    frames, valid, _, _ = data.batch(idx)
                    logits = self.model(self._inputs(frames, valid))
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.cfg.labels)), np.float32)

    # -- training -------------------------------------------------------------------------
    def run(self) -> dict:
        recipe = self.spec.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        precision = f"{self.amp_dtype}".replace("torch.", "") + " autocast" if self.amp else "fp32"
        self.progress(f"{self.cfg.system_name}: {self.model.num_trainable():,} trainable parameters, "
                      f"device {self.device}, {precision}")
        data = {name: load_split(self.splits.split(name), self.fbank_cache, self.progress)
                for name in ("train", "val", "test")}
        if not len(data["train"]) or not len(data["val"]):
            raise ConfigError("the data set needs training and validation items")
        cached = {name: self._backbone_outputs(d) for name, d in data.items()} if self.fixed_input else None
        params = self.model.trainable_parameters()
        state_file = self.out / "last.pt"
        history: list[dict] = []
        best = {"score": -math.inf, "epoch": -1, "state": trained_state(self.model)}
        start_epoch = 0
        opt = None
        if params:
            opt = torch.optim.Adam(params, lr=recipe.lr, betas=tuple(recipe.betas), weight_decay=recipe.weight_decay)
            if state_file.is_file():
                saved = torch.load(state_file, map_location="cpu", weights_only=True)
                if saved.get("system") == self.cfg.to_dict() and saved.get("recipe") == recipe.to_dict():
                    self.model.load_state_dict(saved["model"], strict=False)
                    opt.load_state_dict(saved["optimizer"])
                    best = saved["best"]
                    history = saved["history"]
                    start_epoch = saved["epoch"] + 1
                    self.progress(f"resuming after epoch {start_epoch} from {state_file}")
        gen = torch.Generator().manual_seed(recipe.seed)
        epochs = recipe.epochs if params else 0
        scaler = torch.amp.GradScaler(enabled=self.amp_dtype == torch.float16)  # bf16 needs no loss scaling
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            lr = recipe.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            self.model.train()
            order = np.random.default_rng([recipe.seed, epoch]).permutation(len(data["train"]))
            losses = []
            for start in range(0, len(order), recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                frames, valid, target, mask = data["train"].batch(idx)
                target, mask = target.to(self.device), mask.to(self.device)
                with self._autocast():
                    if cached is not None:
                        x = torch.from_numpy(self._mapper_input(cached["train"])[idx]).to(self.device)
                        logits = self.model.mapper(x)
                    else:
                        frames = spec_augment(frames, recipe.freqm, recipe.timem, gen)
                        logits = self.model(self._inputs(frames, valid))
                loss = masked_bce(logits.float(), target, mask, hard=recipe.hard_targets)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(loss.detach().item())
            val = self._report("val", data, cached)
            record = {"epoch": epoch + 1, "lr": lr, "loss": float(np.mean(losses)), "val_macro_f1": val.macro_f1,
                      "seconds": time.perf_counter() - t0}
            history.append(record)
            if val.macro_f1 > best["score"]:
                best = {"score": val.macro_f1, "epoch": epoch + 1, "state": trained_state(self.model)}
            self.progress(f"epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  val F1 {val.macro_f1:.4f}  "
                          f"lr {lr:.2e}  {record['seconds']:.1f} s")
            torch.save({"system": self.cfg.to_dict(), "recipe": recipe.to_dict(), "epoch": epoch,
                        "model": trained_state(self.model), "optimizer": opt.state_dict(), "best": best,
                        "history": history}, state_file.with_suffix(".tmp"))
            state_file.with_suffix(".tmp").replace(state_file)
        self.model.load_state_dict(best["state"], strict=False)
        val_scores = self.scores(data["val"], cached and cached["val"])
        thresholds = tune_thresholds(data["val"].target, data["val"].mask, val_scores)
        test_scores = self.scores(data["test"], cached and cached["test"])
        test = evaluate(self.cfg.labels, data["test"].target, data["test"].mask, test_scores)
        tuned = evaluate(self.cfg.labels, data["test"].target, data["test"].mask, test_scores, thresholds)
        metrics = {"best_epoch": best["epoch"], "val_macro_f1": best["score"] if params else
                   evaluate(self.cfg.labels, data["val"].target, data["val"].mask, val_scores).macro_f1,
                   "test": test.summary(), "test_tuned_thresholds": tuned.summary(),
                   "per_instrument_f1": dict(zip(self.cfg.labels, map(float, test.f1_macro)))}
        model_file = save_model(self.out / "model.pt", self.model, self.cfg, self.backbone, thresholds,
                                recipe.to_dict(), metrics, history)
        (self.out / "metrics.json").write_text(json.dumps({**metrics, "history": history}, indent=2))
        self.progress(test.table())
        return {"model": str(model_file), "metrics": metrics, "history": history, "report": test}

    def _report(self, split: str, data: dict, cached: dict | None) -> Report:
        d = data[split]
        return evaluate(self.cfg.labels, d.target, d.mask, self.scores(d, cached and cached[split]))


def train(spec: TrainSpec, runs: int = 1, progress: Progress | None = None) -> dict:
    """Train ``runs`` times with seeds seed, seed+1, ...; one run writes ``out/model.pt``, several
    write ``out/run-N/model.pt``. Returns each run's result and mean +- std of the test scores."""
    if runs < 1:
        raise ConfigError("--runs must be at least 1")
    splits = open_dataset(spec.data, spec.fmt, spec.val_fraction, spec.recipe.seed)
    results = []
    for r in range(runs):
        run_spec = copy.copy(spec)
        run_spec.recipe = spec.recipe.with_overrides(seed=spec.recipe.seed + r)
        if runs > 1:
            run_spec.out = str(Path(spec.out) / f"run-{r + 1}")
            if progress:
                progress(f"run {r + 1}/{runs} (seed {run_spec.recipe.seed})")
        results.append(Trainer(run_spec, splits, progress).run())
    f1 = np.array([res["metrics"]["test"]["macro_f1"] for res in results])
    summary = {"runs": len(results), "test_macro_f1_mean": float(f1.mean()), "test_macro_f1_std": float(f1.std()),
               "models": [res["model"] for res in results]}
    if runs > 1:
        (Path(spec.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"results": results, "summary": summary}


def evaluate_model(model_path: str, data: str, fmt: str = "auto", split: str = "test", source: str | None = None,
                   cache_dir: str | None = None, val_fraction: float = 0.15, seed: int = 0) -> tuple[Report, Report]:
    """Reports (threshold 0.5: the OpenMIC protocol; the model's tuned thresholds) on a split."""
    from mictag.train.checkpoint import load_model

    model, payload = load_model(model_path, source)
    cfg = model.cfg
    splits = open_dataset(data, fmt, val_fraction, seed)
    if tuple(splits.labels) != tuple(cfg.labels):
        raise ConfigError(f"the data set's labels ({', '.join(splits.labels)}) differ from the model's")
    cache_root = Path(cache_dir) if cache_dir else mictag_home() / "cache"
    d = load_split(splits.split(split), FbankCache(cache_root, cfg.fbank))
    finish = FrameFinish(cfg.fbank, normalize=cfg.normalize_input)
    scores = []
    with torch.inference_mode():
        for start in range(0, len(d), 16):
            frames, valid, _, _ = d.batch(np.arange(start, min(start + 16, len(d))))
            scores.append(torch.sigmoid(model(finish(frames, valid))).numpy())
    s = np.concatenate(scores)
    return (evaluate(cfg.labels, d.target, d.mask, s),
            evaluate(cfg.labels, d.target, d.mask, s, np.asarray(payload["thresholds"])))
