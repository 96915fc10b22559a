"""Targets: where the integers go (quantized checkpoints, ONNX, C for microcontrollers, CIM, NIR)."""
