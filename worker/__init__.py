"""dfmod worker: consume media events, detect faces, score them on Triton, publish verdicts.

The stages of DESIGN.md section 1 are modules of this package, in pipeline order:
consume -> fetch -> decode -> faces -> batch -> infer -> aggregate -> cache -> publish.
"""

from worker.core.version import PIPELINE_VERSION, PREPROCESSING_VERSION, __version__

__all__ = ["PIPELINE_VERSION", "PREPROCESSING_VERSION", "__version__"]
