"""The matrix-multiply ceiling of each precision on this machine, measured at the AST's own
shapes: the FLOP/s that MFU is reported against (no datasheet peak holds for a shared VM).

Each engine present multiplies the four Linear shapes of one transformer block (qkv, proj, fc1,
fc2 at M = batch x tokens); a precision's ceiling is the best engine's total FLOPs over its total
time. fp32: torch (MKL or oneDNN), ONNX Runtime (MLAS) and OpenVINO (oneDNN brgemm), which differ
a lot on some CPUs (torch's MKL takes a slow path on AMD); bf16: torch (oneDNN) and OpenVINO;
int8: ONNX Runtime's MatMulInteger, uint8 activations x int8 weights (what mictag's int8 path
runs). fp16 is torch only (emulated on most CPUs).
"""

from __future__ import annotations

import numpy as np

from mictag.timing import best_seconds


def block_shapes(tokens: int = 1214, hidden: int = 768, mlp: int = 3072, batch: int = 4) -> list[tuple[int, int, int]]:
    m = batch * tokens
    return [(m, hidden, 3 * hidden), (m, hidden, hidden), (m, hidden, mlp), (m, mlp, hidden)]


def torch_ceiling(dtype_name: str, shapes, repeats: int = 3, device: str = "cpu") -> float:
    """FLOP/s of torch matmul in ``dtype_name`` over ``shapes``."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    flops = seconds = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

        def run():
            a @ b
            sync()

        seconds += best_seconds(run, repeats)
        flops += 2.0 * m * k * n
    return flops / seconds


def _matmul_graph(k: int, n: int, rng):
    from onnx import TensorProto, helper

    w = rng.standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [k, n], w.tobytes(), raw=True)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_ceiling(graph_for, input_for, shapes, repeats: int) -> float | None:
    """FLOP/s of ONNX Runtime on one-node graphs ``graph_for(k, n, rng)`` fed ``input_for(m, k, rng)``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    flops = seconds = 0.0
    for m, k, n in shapes:
        session = ort.InferenceSession(graph_for(k, n, rng).SerializeToString(), providers=["CPUExecutionProvider"])
        a = input_for(m, k, rng)
        seconds += best_seconds(lambda: session.run(None, {"a": a}), repeats)
        flops += 2.0 * m * k * n
    return flops / seconds


def ort_fp32_ceiling(shapes, repeats: int = 3) -> float | None:
    return _ort_ceiling(_matmul_graph, lambda m, k, rng: rng.standard_normal((m, k)).astype(np.float32), shapes, repeats)


def openvino_ceiling(precision: str, shapes, repeats: int = 3) -> float | None:
    try:
        from mictag.runtime.engines.openvino import import_openvino

        ov = import_openvino()
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    core = ov.Core()
    flops = seconds = 0.0
    for m, k, n in shapes:
        model = core.read_model(_matmul_graph(k, n, rng).SerializeToString(), b"")
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]})
        request = compiled.create_infer_request()
        a = rng.standard_normal((m, k)).astype(np.float32)
        seconds += best_seconds(lambda: request.infer({0: a}), repeats)
        flops += 2.0 * m * k * n
    return flops / seconds


def _matmul_integer_graph(k: int, n: int, rng):
    from onnx import TensorProto, helper

    w = rng.integers(-127, 127, (k, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "az", "wz"], ["y"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
        [helper.make_tensor("w", TensorProto.INT8, [k, n], w.tobytes(), raw=True),
         helper.make_tensor("az", TensorProto.UINT8, [], [128]),
         helper.make_tensor("wz", TensorProto.INT8, [], [0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def int8_ceiling(shapes, repeats: int = 3) -> float | None:
    """FLOP/s (int8 ops counted as FLOPs) of ONNX Runtime's MatMulInteger, uint8 x int8."""
    return _ort_ceiling(_matmul_integer_graph, lambda m, k, rng: rng.integers(0, 255, (m, k), dtype=np.uint8),
                        shapes, repeats)


def ceilings(precisions=("fp32", "bf16", "int8"), batch: int = 4, tokens: int = 1214, repeats: int = 3,
             device: str = "cpu") -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """({precision: best FLOP/s}, {precision: {engine: FLOP/s}}) measured here."""
    shapes = block_shapes(tokens=tokens, batch=batch)
    every: dict[str, dict[str, float]] = {}
    for p in precisions:
        found = {}
        if p == "int8":
            found["onnxruntime"] = int8_ceiling(shapes, repeats)
        else:
            found["torch"] = torch_ceiling(p, shapes, repeats, device)
            if device == "cpu" and p == "fp32":
                found["onnxruntime"] = ort_fp32_ceiling(shapes, repeats)
            if device == "cpu" and p in ("fp32", "bf16"):
                found["openvino"] = openvino_ceiling(p, shapes, repeats)
        every[p] = {k: v for k, v in found.items() if v}
    return {p: max(v.values()) for p, v in every.items() if v}, every
