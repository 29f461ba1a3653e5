"""Reading and writing networks and specifications (npz model files; ONNX and VNN-LIB as issues add them)."""
