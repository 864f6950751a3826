"""Export of trained models for use outside clap-lightning (ONNX)."""
