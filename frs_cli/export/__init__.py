"""Trained detectors written for other runtimes (``onnx``)."""
