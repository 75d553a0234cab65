"""ONNX Runtime with the CPU, CUDA or TensorRT execution provider, on an exported ``.onnx``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mictag.errors import ModelError
from mictag.runtime.engines.choice import ORT_PROVIDERS
from mictag.runtime.engines.base import (Backend, Submitted, _in_parts, embedding_width, input_names, row_shapes,
                                          model_errors)


class OrtBackend(Backend):
    """ONNX Runtime. On the CUDA and TensorRT providers the session runs behind IO binding
    (:mod:`mictag.runtime.engines.ort_binding`): device buffers per batch bucket, bound once, uploads of
    batch n+1 while batch n runs, only the probabilities read back; the TensorRT provider caches
    its engines beside the model. ``io_binding`` forces it on or off (the CPU provider runs plain
    ``session.run`` unless asked)."""

    def __init__(self, path: Path, name: str, threads: int | None = None, precision: str = "fp32",
                 io_binding: bool | None = None, batch: int | None = None):
        import onnxruntime as ort

        from mictag.metadata import check_metadata, read_metadata

        provider = ORT_PROVIDERS[name]
        available = tuple(ort.get_available_providers())
        if provider not in available:
            raise ModelError(f"backend {name} needs ONNX Runtime's {provider}, which this installation lacks "
                             f"(it has {', '.join(available)})")
        self.name = name
        self.preferred_batch = batch or (4 if name == "ort-cpu" else 64)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        with model_errors(lambda exc: f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}"):
            if name == "ort-cpu":
                providers: list = [provider]
            else:
                from mictag.runtime.engines.ort_binding import provider_options

                meta = read_metadata(path)
                names = input_names(meta.get("variant", "waveform"))
                providers = provider_options(name, Path(path), row_shapes(meta, names), self.preferred_batch,
                                             precision, available)
            self.session = ort.InferenceSession(str(path), options, providers=providers)
            self.meta = check_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        if provider not in self.session.get_providers():
            # ONNX Runtime falls back to the CPU when a provider fails to start; say so, don't crawl.
            raise ModelError(f"ONNX Runtime could not start its {provider} for {path} (its 'EP Error' above says why); "
                             f"it would run on {', '.join(self.session.get_providers())}")
        self.inputs = input_names(self.variant)
        self.bound = None
        if (name != "ort-cpu") if io_binding is None else io_binding:
            from mictag.runtime.engines.ort_binding import BoundSession

            device = "cpu" if name == "ort-cpu" else "cuda"
            self.bound = BoundSession(self.session, self.inputs, self.preferred_batch, device=device)
            self.in_flight = 2

    def run(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.bound is not None:
            return self.submit(x, valid).result()
        return self.session.run(["probabilities"], {self.inputs[0]: x, self.inputs[1]: valid.astype(np.int64)})[0]

    def run_embedded(self, x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.bound is not None:
            return super().run_embedded(x, valid)
        probs, embeddings = self.session.run(["probabilities", "embedding"],
                                             {self.inputs[0]: x, self.inputs[1]: valid.astype(np.int64)})
        return probs, embeddings

    def want_embeddings(self) -> None:
        dim = embedding_width({o.name: o.shape[-1] for o in self.session.get_outputs() if o.shape})
        if self.bound is not None:
            self.bound.bind_embeddings(dim)
        self.embeds = True

    def submit(self, x: np.ndarray, valid: np.ndarray) -> Submitted:
        if self.bound is None:
            return super().submit(x, valid)
        if x.shape[0] == 0:
            return self._empty()
        labels = len(self.meta["labels"])
        return _in_parts(lambda a, v: self.bound.submit(a, v, labels), np.asarray(x, np.float32),
                         np.asarray(valid), self.bound.max_batch)
