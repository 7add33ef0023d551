"""One process of a multi-process run on this machine (used by tests/test_multihost.py).

    python tests/multihost_worker.py DATA_ROOT WORKDIR EPOCHS [PROCESS_ID NUM_PROCESSES PORT]

Without the last three it is a plain single-process run. Devices come from XLA_FLAGS.
"""

import json
import os
import pathlib
import sys

import jax

for _path in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
              os.path.dirname(os.path.abspath(__file__))):  # the package; tests' helpers
    if _path not in sys.path:
        sys.path.insert(0, _path)


def worker_config(data_root: pathlib.Path, epochs: int):
    """The run every process trains: also the test's single-process run (in its own process)."""
    from helpers import run_config, sections_off

    config = run_config("r18_msml", data_root, epochs=epochs)
    config.train.log_every_steps = 1
    config.train.eval_batch_size = 8
    config.train.checkpoint_every_steps = 1000
    return sections_off(config)  # the tests read the test split's scores only


def main(argv: list[str]) -> None:
    data_root, workdir, epochs = pathlib.Path(argv[0]), argv[1], int(argv[2])
    from cxrjax.io import compilation_cache

    # As the entry points do: the session's cache (CXRJAX_COMPILE_CACHE, tests/conftest.py), so
    # that a worker loads the steps an earlier worker of the same shape compiled.
    compilation_cache.enable(None)
    if len(argv) > 3:
        process_id, num_processes, port = (int(a) for a in argv[3:6])
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                                   num_processes=num_processes, process_id=process_id)
    from cxrjax import train
    from cxrjax.io import preemption

    try:
        results = train.train_and_evaluate(worker_config(data_root, epochs), workdir)
    except preemption.Preempted as e:  # as cxrjax.main does
        print(e, flush=True)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "worker_result.json"), "w") as f:
            json.dump({"devices": jax.device_count(), "processes": jax.process_count(),
                       "n_images": results["fused"]["n_images"],
                       "mean_auc": results["fused"]["mean_auc"]}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
