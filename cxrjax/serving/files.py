"""The export folder's layout: every file name once, shared by the exporter and the loader.

Kept free of any other import so that ``cxrjax.serving`` needs only jax, numpy and Pillow.
"""

FORMAT = "cxrjax-export"  # manifest.json's "format"
VERSION = 1  # bumped when the layout or the entries' signature change

MANIFEST = "manifest.json"  # classes, heads, entries, platforms, sizes, limitations, hashes
PREPROCESSING = "preprocessing.json"  # the decode -> resize -> crop -> normalise contract
WEIGHTS = "weights.npz"  # the variables' leaves, in the entries' argument order
ENTRIES = {"uint8": "forward_uint8.jax", "uint16": "forward_uint16.jax"}  # jax.export bytes
THRESHOLDS = "thresholds.json"  # the run's per-class operating points, when it was tested
CALIBRATION = "calibration.json"  # the fused rescaling fitted on validation, when fitted
MODEL_CARD = "model_card.md"
REFERENCE = "reference"  # three input images and expected.npz
EXPECTED = "reference/expected.npz"  # "crops" (uint8) and one (N, C) array per head

TOLERANCE = 1e-5  # how far a rerun reference output may move
HASHED = (WEIGHTS, *ENTRIES.values(), PREPROCESSING)  # files whose sha256 the manifest records
