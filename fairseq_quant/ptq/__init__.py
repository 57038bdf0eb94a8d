"""Post-training quantization: offline tools over a model (calibration, AdaRound, sensitivity sweeps)."""
