"""int8 quantization: PTQ (calibrated), LSQ QAT and mixed precision, exported as QDQ ONNX that ONNX Runtime runs
in int8. The pass is ``handler.QuantizePass`` (kind ``"quantize"``, config ``config.QuantizeConfig``); see docs, quantize."""
