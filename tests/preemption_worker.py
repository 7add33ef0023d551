"""A tiny training loop that saves and stops on a preemption notice; test_preemption signals it.

usage: preemption_worker.py CHECKPOINT_DIR READY_FILE [PROCESS_ID NUM_PROCESSES PORT]

Each step adds 1 to a small array. At the step the watcher names it saves the array with orbax
(asynchronously), sends itself a second SIGTERM while that save is in flight, waits for the
save, and exits with PREEMPTED_EXIT_CODE and the one-line message.
"""

import os
import signal
import sys
import time

import jax
import numpy as np


def main(checkpoint_dir: str, ready_file: str, *distributed: str) -> int:
    if distributed:
        process_id, num_processes, port = map(int, distributed)
        jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                                   num_processes=num_processes, process_id=process_id)
    import orbax.checkpoint as ocp

    from cxrjax.io import preemption

    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True, max_to_keep=2)
    manager = ocp.CheckpointManager(checkpoint_dir, options=options)
    state = {"x": np.zeros(4, np.float32)}
    with preemption.PreemptionWatcher() as watcher:
        with open(f"{ready_file}.{jax.process_index()}", "w"):
            pass
        for step in range(1, 3000):
            state = {"x": state["x"] + 1}  # the step's work
            time.sleep(0.01)
            if watcher.reached(step):
                manager.save(step, args=ocp.args.StandardSave(state), force=True)
                os.kill(os.getpid(), signal.SIGTERM)  # a second notice during the save
                manager.wait_until_finished()
                manager.close()
                print(preemption.Preempted(step, checkpoint_dir), flush=True)
                return preemption.PREEMPTED_EXIT_CODE
    print("no preemption notice arrived", flush=True)
    return 1


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(*sys.argv[1:]))
