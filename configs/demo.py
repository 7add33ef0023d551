"""The embedded default: R18 + R18-F-MSML from scratch on a synthetic ChestX-ray14, on a CPU.

No download and no weights: the synthetic set (3000 images in the NIH layout, labels sampled
from the real table) is made in the workdir and prepared through the real builder; training runs
on 96-px crops of 112-px images (on XLA's CPU backend, 96 px trains ~4x faster than 64 px), with
each stream reduced to 64 channels before the bilinear product (4k instead of 262k features:
CPU-sized).
"""

from cxrjax import recipe


def get_config():
    c = recipe.row("r18_msml")
    c.model.init = "scratch"
    c.model.bilinear_reduce = 64
    c.data.source = "synthetic"
    c.data.resolution = 112
    c.data.crop = 96
    c.data.workers = 0
    c.train.batch_size = 32
    c.train.lr = 1e-3  # from scratch: a larger step than the paper's fine-tuning 1e-4
    c.train.lr_decay_epochs = 4
    c.train.stages[0].epochs = 5  # the whole demo in under 10 min on 2 cores (see the README)
    c.train.log_every_steps = 20
    c.eval.n_boot = 200
    # The report ends with operating points, calibration and box localization (eval.*, about
    # half a minute on 2 cores). At 96-px crops stream A's last map is 3x3; the 6x6 Grad-CAM
    # of its stride-16 block localizes the synthetic findings better (all heatmaps are scored).
    c.eval.localization_heatmap = "gradcam_fine"
    return c

