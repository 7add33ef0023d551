"""What the checkpoint's array checksums cost: a real-size TrainState (a config's model with its
optimizer: params, batch statistics, Adam's two moments) checksummed beside the save call.

    python scripts/benchmark.py checkpoint --configs r18 [--steps 5] [--set KEY=VALUE ...]

One JSON line per config: the state's bytes, the checksum's seconds (compiled; the first call's
compile reported apart), ``checkpoint.save``'s seconds (the call: what the loop waits for,
checksum included) and the save's seconds until its write completes, each the median of
``--steps`` saves into a temporary directory.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator

from bench_common import load_config


def run_checkpoint(args) -> Iterator[dict]:
    import jax

    from cxrjax import models, train_step
    from cxrjax.evaluation import inference
    from cxrjax.io import checkpoint, checksums
    from cxrjax.runfolder import loading as runs

    for name in args.configs.split(","):
        config = load_config(name, args.set)
        config.model.init = "scratch"
        mesh = inference.create_mesh()
        model, variables = runs.init_model(config, models.compute_dtype(config.dtype))
        state, _ = train_step.create_stage(config, 0, model, variables, 1000, mesh)
        jax.block_until_ready(state)
        start = time.perf_counter()
        checksums.state_checksums(state)
        first_s = time.perf_counter() - start
        checksum_s, call_s, write_s = [], [], []
        with tempfile.TemporaryDirectory() as directory:
            manager = checkpoint.open_manager(directory, keep=2)
            for step in range(1, max(args.steps, 1) + 1):
                start = time.perf_counter()
                checksums.state_checksums(state)
                checksum_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                checkpoint.save(manager, step, state, {}, {})
                call_s.append(time.perf_counter() - start)
                checkpoint.wait(manager)
                write_s.append(time.perf_counter() - start)
            manager.close()
        leaves = jax.tree.leaves(state)
        median = lambda xs: round(statistics.median(xs), 4)  # noqa: E731
        yield {"bench": "checkpoint_checksum", "config": name,
               "state_bytes": int(sum(x.nbytes for x in leaves)), "arrays": len(leaves),
               "checksum_first_call_s": round(first_s, 3), "checksum_s": median(checksum_s),
               "save_call_s": median(call_s), "save_until_written_s": median(write_s),
               "checksum_share_of_save_call": round(median(checksum_s) / median(call_s), 3),
               "saves": len(call_s)}
