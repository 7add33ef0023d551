"""The heads: global-average-pool classifiers (every backbone's and the paper's CE/MSML heads)
and (self-)bilinear pooling (Ge et al. 2.2-2.3).

Bilinear pooling of `fa (B,H,W,Ca)` and `fb (B,H,W,Cb)`: the outer product fa_l fb_l^T at each
location l, averaged over locations, signed square root, L2 normalisation, then "a further 1x1
convolution" - on the pooled 1x1 map that is a dense layer (`proj`, width `dim`). The average
over locations is ONE contraction (einsum over h,w) with float32 accumulation, so B*H*W*Ca*Cb is
never materialised and bfloat16 trunks do not lose the sum's precision.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cxrjax.models.common import adaptive_avg_pool

SQRT_EPS = 1e-10  # sign(x) * sqrt(|x| + eps), as the torch reference: finite gradient at 0
L2_EPS = 1e-12  # as torch.nn.functional.normalize


def match_spatial(fa: jnp.ndarray, fb: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Average-pool the larger map down to the smaller one's (H, W) (torch's adaptive pool).

    VGG16's trunk gives 14x14 at 224^2 where ResNet/DenseNet give 7x7: the 14x14 map is pooled
    2x2 to 7x7, so both streams describe the same image regions. Each axis goes to the minimum.
    """
    hw = (min(fa.shape[1], fb.shape[1]), min(fa.shape[2], fb.shape[2]))
    return adaptive_avg_pool(fa, hw), adaptive_avg_pool(fb, hw)


def bilinear_pool(fa: jnp.ndarray, fb: jnp.ndarray) -> jnp.ndarray:
    """(B,H,W,Ca), (B,H',W',Cb) -> (B, Ca*Cb) float32: mean outer product, signed sqrt, L2 norm."""
    fa, fb = match_spatial(fa, fb)
    dtype = jnp.promote_types(fa.dtype, fb.dtype)
    h, w = fa.shape[1:3]
    z = jnp.einsum("bhwc,bhwd->bcd", fa.astype(dtype), fb.astype(dtype),
                   preferred_element_type=jnp.float32) / (h * w)
    z = z.reshape(z.shape[0], -1)
    z = jnp.sign(z) * jnp.sqrt(jnp.abs(z) + SQRT_EPS)
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), L2_EPS)


class GlobalAvgPoolDense(nn.Module):
    """Global average pool (float32) + dense layer: logits (B, num_classes) in float32.

    The one "pool and classify" head: torchvision's ResNet (`fc`) and DenseNet (`classifier`)
    heads and the paper's CE and MSML heads. `dense_name` is the dense layer's parameter name,
    torchvision's own, so that porting weights stays a renaming. `train` is accepted (and
    unused) so that every architecture's head is called the same way.
    """

    num_classes: int
    dtype: Any = jnp.float32
    dense_name: str = "fc"

    @nn.compact
    def __call__(self, feats: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = jnp.mean(feats.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype,
                        name=self.dense_name)(x).astype(jnp.float32)


class Bilinear(nn.Module):
    """Optional 1x1 reductions, bilinear pooling, and the 1x1-conv projection to `dim` features.

    With `fb=None` it is the paper's self-bilinear ("-BL") head: the outer product of one map with
    itself (one shared reduction). `reduce` shrinks each stream's channels before the outer
    product: DenseNet121's 1024x1024 = 1M features would need a 0.5 G-parameter projection.
    The projection is linear (no activation), like the torch reference, followed by `head_fce`.
    """

    dim: int = 512
    reduce: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, fa: jnp.ndarray, fb: jnp.ndarray | None = None) -> jnp.ndarray:
        if self.reduce is not None:
            fa = nn.Dense(self.reduce, dtype=self.dtype, name="reduce_a")(fa)
            if fb is not None:
                fb = nn.Dense(self.reduce, dtype=self.dtype, name="reduce_b")(fb)
        z = bilinear_pool(fa, fa if fb is None else fb)
        return nn.Dense(self.dim, dtype=self.dtype, name="proj")(z.astype(self.dtype))
