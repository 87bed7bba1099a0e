"""Predicting [MASK] words: the Predictor, its inputs and results, PyTorch and ONNX backends."""
