"""Backbone throughput: forward and forward+backward images/s per architecture, JAX beside
torchvision on the same device in the same run, float32 and bfloat16.

    python scripts/benchmark.py backbone --batch 32 --size 224 --steps 10 --warmup 2 \
        [--archs resnet18,densenet121] [--dtypes float32,bfloat16] [--no-torch]
    python scripts/bench_backbone.py ...      # the same, standalone

JAX: the classifier (trunk + torchvision head) jitted; "fwd" is eval mode, "fwd_bwd" is the
gradient of the summed logits in train mode (batch statistics, BN state updated). Torch: the
torchvision model, eval + no_grad for "fwd", train mode + backward for "fwd_bwd", channels_last,
bfloat16 through autocast. Random weights: throughput does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ARCHS = ("resnet18", "resnet34", "resnet50", "densenet121", "vgg16", "vgg16_bn")


def _parse_extra(args) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmark.py backbone")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--no-torch", action="store_true")
    extra, rest = p.parse_known_args(getattr(args, "extra", []) or [])
    if rest:
        raise SystemExit(f"bench_backbone: unknown arguments {rest}")
    for a in extra.archs.split(","):
        if a not in ARCHS:
            raise SystemExit(f"bench_backbone: unknown arch {a!r}; known: {', '.join(ARCHS)}")
    return extra


def _time(fn, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per step, warmup seconds incl. compilation) of `fn()` (which blocks)."""
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps, warm


def bench_jax(arch: str, dtype: str, batch: int, size: int, steps: int, warmup: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cxrjax.models import create_classifier

    model = create_classifier(arch, dtype=jnp.dtype(dtype))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x[:1])
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))

    @jax.jit
    def fwd_bwd(v, x):
        def loss(params):
            out, upd = model.apply({**v, "params": params}, x, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
            return out.sum(), upd
        return jax.grad(loss, has_aux=True)(v["params"])

    out = []
    for mode, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        dt, warm = _time(lambda fn=fn: jax.block_until_ready(fn(variables, x)), steps, warmup)
        out.append({"impl": "jax", "mode": mode, "img_per_s": round(batch / dt, 1),
                    "step_ms": round(1e3 * dt, 2), "warmup_s": round(warm, 1)})
    return out


def bench_torch(arch: str, dtype: str, batch: int, size: int, steps: int,
                warmup: int) -> list[dict]:
    import torch
    import torchvision

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = getattr(torchvision.models, arch)(weights=None).to(dev)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def fwd():
        with torch.no_grad(), torch.autocast(**amp):
            model(x)
        sync()

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with torch.autocast(**amp):
            y = model(x)
        y.float().sum().backward()
        sync()

    out = []
    for mode, fn, train in (("fwd", fwd, False), ("fwd_bwd", fwd_bwd, True)):
        model.train(train)
        dt, warm = _time(fn, steps, warmup)
        out.append({"impl": "torch", "mode": mode, "img_per_s": round(batch / dt, 1),
                    "step_ms": round(1e3 * dt, 2), "warmup_s": round(warm, 1),
                    "torch_version": torch.__version__})
    return out


def run_backbone(args) -> list[dict]:
    """All measurements as records (each also printed to stderr as a JSON line when taken)."""
    extra = _parse_extra(args)
    batch, size = getattr(args, "batch", 32), getattr(args, "size", 224)
    steps, warmup = getattr(args, "steps", 10), getattr(args, "warmup", 2)
    records = []
    for arch in extra.archs.split(","):
        for dtype in extra.dtypes.split(","):
            impls = [bench_jax] + ([] if extra.no_torch else [bench_torch])
            for bench in impls:
                for r in bench(arch, dtype, batch, size, steps, warmup):
                    rec = {"bench": "backbone", "arch": arch, "dtype": dtype, "batch": batch,
                           "size": size, **r}
                    print(json.dumps(rec), file=sys.stderr, flush=True)
                    records.append(rec)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args, args.extra = p.parse_known_args(argv)
    import jax

    for rec in run_backbone(args):
        print(json.dumps({"device": str(jax.devices()[0].device_kind), **rec}), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
