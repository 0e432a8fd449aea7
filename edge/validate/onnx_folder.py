def validate_onnx_folder(d): raise NotImplementedError
