"""Shared helpers of the model tests: torchvision models with randomised BatchNorm statistics."""

import pytest


def randomise_batchnorm(model, seed: int = 0):
    """Random running mean/var and affine parameters: defaults (0, 1, 1, 0) hide mapping bugs.

    Scales stay moderate (gamma < 1) so deep residual stacks keep float32 logits O(1-10).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.3 + 0.7 * torch.rand(n, generator=g))
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


@pytest.fixture(scope="session")
def tv_model():
    """Factory: torchvision `arch` with random weights and randomised BN, cached per arch."""
    import torch
    import torchvision

    cache = {}

    def make(arch: str):
        if arch not in cache:
            torch.manual_seed(0)
            model = getattr(torchvision.models, arch)(weights=None)
            cache[arch] = randomise_batchnorm(model).eval()
        return cache[arch]

    return make


@pytest.fixture(scope="session")
def ported(tv_model):
    """Factory: cxrjax variables ported from `tv_model(arch)`, cached per arch."""
    from cxrjax.models.port import torchvision_to_flax

    cache = {}

    def make(arch: str):
        if arch not in cache:
            cache[arch] = torchvision_to_flax(arch, tv_model(arch).state_dict())
        return cache[arch]

    return make
