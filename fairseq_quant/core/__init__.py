"""The quantization core, pure PyTorch (no fairseq): number formats, range estimators, the spec of one
quantization point, QuantMeasure, recipes as data, and the cyclic-precision schedule."""
