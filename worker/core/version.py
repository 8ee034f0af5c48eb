"""Versions that travel in every verdict and in every cache key.

`PREPROCESSING_VERSION` names the face pipeline (detector-independent geometry: 5-point similarity
alignment, margin scale 1.3, 224x224 RGB uint8). Training writes it into the exported model config and the
worker refuses a model trained on other crops. `PIPELINE_VERSION` covers everything that can change a
verdict besides the model (sampling, aggregation); bump it and every cached verdict is recomputed.
"""

__version__ = "0.1.0"
PREPROCESSING_VERSION = "align5-s1.3-224-rgb-v1"
#: faces2: every face up to the caps (32 per frame, 256 per media) from 10 px, largest first; faces1 scored the
#: 4 best-scoring faces of at least 24 px, so a group photo's cached verdict would be wrong.
FACE_SELECTION_VERSION = "faces2"
PIPELINE_VERSION = f"dfmod-{__version__}+{PREPROCESSING_VERSION}+{FACE_SELECTION_VERSION}"


def pipeline_version(sampling: str = "exact") -> str:
    """`PIPELINE_VERSION` for a frame-sampling mode: approximate sampling gives other verdicts, so other cache keys."""
    return PIPELINE_VERSION if sampling == "exact" else f"{PIPELINE_VERSION}+sampling-{sampling}"
