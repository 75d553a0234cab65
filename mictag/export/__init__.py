"""Export: the composed model as one ONNX graph, TensorRT engines and a torch artifact."""
