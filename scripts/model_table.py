"""The README's model table: parameters and FLOPs per 224^2 image of every paper row.

The rows are Table 1's networks in ``cxrjax.recipe.ROWS``, in the paper's order.

    python scripts/model_table.py [--size 224] [--json]

FLOPs come from XLA's cost analysis of the jitted eval-mode forward at batch 1 (a multiply-add
counts as 2 FLOPs); nothing is materialised (abstract shapes only), so it runs on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cxrjax import recipe  # noqa: E402
from cxrjax.models import build_model  # noqa: E402


def table_rows() -> list[tuple[str, str]]:
    """(label, name) of each row of the paper's Table 1 that is one config (``recipe.ROWS``)."""
    return [(r.label, r.name) for r in recipe.ROWS.values() if r.in_table1 and r.build is not None]


def measure(model_cfg, size: int = 224) -> dict:
    """Parameter count and XLA-estimated forward FLOPs per image of `model_cfg`."""
    model = build_model(model_cfg, jnp.float32)
    x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.uint8)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    n_params = sum(int(v.size) for v in jax.tree.leaves(variables["params"]))
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"params": n_params, "gflops": float(cost["flops"]) / 1e9}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--json", action="store_true", help="one JSON line per row")
    args = p.parse_args(argv)
    if not args.json:
        print(f"| paper row | config | parameters | GFLOPs / image at {args.size}² |")
        print("|---|---|---:|---:|")
    for row, name in table_rows():
        model_cfg = recipe.row(name).model
        m = measure(model_cfg, args.size)
        if args.json:
            print(json.dumps({"row": row, "config": name, "size": args.size, **m}), flush=True)
        else:
            print(f"| {row} | `configs/{name}.py` | {m['params'] / 1e6:.1f} M | "
                  f"{m['gflops']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
