"""int8 quantization: PTQ (calibrated), LSQ QAT and mixed precision, exported as QDQ ONNX that ONNX Runtime runs
in int8. The recipe handler is ``handler.handler`` (kind ``"quantize"``); see README "Quantization"."""
