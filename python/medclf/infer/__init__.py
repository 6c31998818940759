"""Using a trained run: predictions files, embeddings, linear probes, ONNX export."""
