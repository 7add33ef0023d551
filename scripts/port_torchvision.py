"""Convert torchvision ImageNet weights to a torch-free cxrjax .npz file.

    python scripts/port_torchvision.py --arch resnet18 --out weights/resnet18.npz
downloads torchvision's IMAGENET1K_V1 weights (needs internet and torch/torchvision), or
    python scripts/port_torchvision.py --arch densenet121 --src chexnet.pth.tar --out d121.npz
converts a local .pth/.pt/.safetensors state dict. Training then loads the .npz without torch.
"""

from __future__ import annotations

import argparse
import sys

from cxrjax.models import ARCHS
from cxrjax.models.port import load_torch_file, save_variables, torchvision_to_flax


def _download(arch: str) -> dict:
    """torchvision's IMAGENET1K_V1 state dict of `arch` (fetched into torch's hub cache)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    except ValueError as e:
        raise ValueError(f"torchvision has no ImageNet weights for {arch!r}") from e
    try:
        return torchvision.models.get_model(arch, weights=weights).state_dict()
    except OSError as e:  # URLError is an OSError
        raise OSError(f"downloading torchvision's {arch} IMAGENET1K_V1 weights failed ({e}); "
                      "without internet, pass a local file with --src") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help=f"one of {', '.join(sorted(ARCHS))}")
    parser.add_argument("--src", help="local .pth/.pt/.safetensors file (default: download)")
    parser.add_argument("--out", required=True, help="output .npz path")
    args = parser.parse_args(argv)
    try:
        state_dict = load_torch_file(args.src) if args.src else _download(args.arch)
        variables = torchvision_to_flax(args.arch, state_dict)
        save_variables(args.out, variables, arch=args.arch)
    except (ValueError, FileNotFoundError, OSError, ImportError) as e:
        print(f"port_torchvision: error: {e}", file=sys.stderr)
        return 1
    n = sum(v.size for c in variables.values() for v in _leaves(c))
    print(f"wrote {args.out}: {args.arch}, {n:,} values (params + batch_stats)")
    return 0


def _leaves(tree):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


if __name__ == "__main__":
    sys.exit(main())
