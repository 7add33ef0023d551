"""Run an exported model (``python -m cxrjax.export``) with jax, numpy and Pillow only.

    model = cxrjax.serving.load("exported/")
    scores = model.predict(["a.png", "b.jpg"])  # scores.probs["fused"]: (2, 14)

``python -m cxrjax.serving.verify DIR`` reruns the folder's reference images. Nothing here
imports flax, the model code or the rest of cxrjax.
"""

from cxrjax.serving.decode import DecodeError
from cxrjax.serving.model import ExportedModel, Scores, ServingError, load

__all__ = ["DecodeError", "ExportedModel", "Scores", "ServingError", "load"]
