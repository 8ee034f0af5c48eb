"""Import the detectors the method's authors released, exactly, into dfmod checkpoints.

Three formats (DESIGN.md section 3, "Released detectors the product imports"):

- `lightning`: yermandy/deepfake-detection `model.ckpt` (Lightning, HF CLIP + peft LN-tuning);
- `torchscript`: its traced `model.torchscript`;
- `gend`: GenD `save_pretrained` folders (`config.json` + `model.safetensors`) on a CLIP backbone.

`read_release` turns any of them (a file, a folder or a hub repo id) into a `Release`: the backbone's
tensors under their Hugging Face CLIP names, the head, whether the head sees the L2-normalised feature,
and the provenance. `train.released.build` maps it onto dfmod's open_clip tower by name and checks the
result against the reference forward; `train.released.command` is `dfmod-train import`.
"""

from train.released.errors import ReleaseError
from train.released.formats import Release, read_release

__all__ = ["Release", "ReleaseError", "read_release"]
