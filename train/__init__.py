"""dfmod training: prepare -> fit -> evaluate/calibrate -> export, for the LN-tuned CLIP detector.

Imports `worker` for the face pipeline and the model contract (a training crop is byte-for-byte a serving
crop); `worker` never imports this package.
"""
