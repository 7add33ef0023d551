"""Tests of cxrjax.io.checkpoint: round trips, what is kept, unreadable steps, old state shapes."""

import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import flip_a_bit, truncate_files, xla_flags

from cxrjax import train_step
from cxrjax.io import checkpoint, checksums


def _state(seed: int = 0, step: int = 0) -> train_step.TrainState:
    """A small TrainState of the real kind: params, BatchNorm statistics and Adam's moments."""
    rng = np.random.default_rng(seed)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}
    opt_state = optax.adam(1e-3).init(params)
    return train_step.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                            batch_stats={"bn": {"mean": jnp.full((2,), float(seed))}},
                            opt_state=opt_state)


def _assert_same(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_save_then_restore_returns_the_state_data_position_and_record(tmp_path):
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=2)
    saved = _state(seed=1, step=7)
    checkpoint.save(manager, 7, saved, b'{"last_seen": 56}', {"stage": "global", "epoch": 0.5})
    manager.wait_until_finished()

    step, state, data_state, meta = checkpoint.restore(manager, _state(seed=2))
    assert step == 7 and int(state.step) == 7
    assert isinstance(state, train_step.TrainState)
    assert isinstance(state.opt_state[0], optax.ScaleByAdamState)  # the optimizer's own types
    _assert_same(state, saved)
    assert data_state == b'{"last_seen": 56}'  # grain's iterator state is bytes
    assert meta == {"stage": "global", "epoch": 0.5}


def test_a_data_state_dict_round_trips(tmp_path):
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=2)
    checkpoint.save(manager, 1, _state(), {"epoch": 3, "order": [2, 0, 1]}, {})
    manager.wait_until_finished()
    assert checkpoint.restore(manager, _state())[2] == {"epoch": 3, "order": [2, 0, 1]}


def test_keeps_the_latest_n_and_the_best_by_validation_auc(tmp_path):
    directory = str(tmp_path / "ckpt")
    manager = checkpoint.open_manager(directory, keep=2)
    val_auc = {2: 0.9, 4: 0.7, 6: 0.8}  # odd steps are mid-epoch: no validation score
    for step in range(1, 7):
        checkpoint.save(manager, step, _state(step=step), {}, {}, val_auc.get(step))
    manager.wait_until_finished()

    assert sorted(manager.all_steps()) == [2, 5, 6]
    reopened = checkpoint.open_manager(directory, keep=1_000_000, read_only=True)
    assert sorted(reopened.all_steps()) == [2, 5, 6]
    assert reopened.best_step() == 2
    assert checkpoint.restore(reopened, _state(), step=2)[0] == 2


@pytest.mark.parametrize("val_auc, kept, best", [
    ({2: 0.6, 4: float("nan"), 6: 0.5}, [2, 5, 6], 2),  # NaN never beats a number
    ({2: float("nan"), 4: 0.7, 6: float("nan")}, [4, 5, 6], 4),
    ({2: float("nan"), 4: float("nan"), 6: float("nan")}, [5, 6], 6),  # all NaN: the latest
])
def test_a_nan_validation_auc_ranks_below_every_number(tmp_path, val_auc, kept, best):
    directory = str(tmp_path / "ckpt")
    manager = checkpoint.open_manager(directory, keep=2)
    for step in range(1, 7):
        checkpoint.save(manager, step, _state(step=step), {}, {}, val_auc.get(step))
    manager.wait_until_finished()
    assert sorted(manager.all_steps()) == kept and manager.best_step() == best
    reopened = checkpoint.open_manager(directory, keep=1_000_000, read_only=True)
    assert reopened.best_step() == best


def _big_state(seed: int, step: int) -> train_step.TrainState:
    """A state whose kernel (64 KiB) dominates the array files, so a flip lands in its data."""
    state = _state(seed, step)
    kernel = jnp.asarray(np.random.default_rng(seed).normal(size=(64, 256)), jnp.float32)
    params = {"dense": {**state.params["dense"], "kernel": kernel}}
    return state.replace(params=params, opt_state=optax.adam(1e-3).init(params))


@pytest.mark.parametrize("damage, says", [
    (truncate_files, "is unreadable"),  # files cut: orbax cannot read the step
    (flip_a_bit, "differ from the checksum"),  # sizes intact: only the checksums see it
])
def test_a_damaged_newest_step_is_set_aside_and_the_previous_restores(tmp_path, caplog, damage,
                                                                      says):
    directory = tmp_path / "ckpt"
    manager = checkpoint.open_manager(str(directory), keep=3)
    older = _big_state(seed=1, step=1)
    checkpoint.save(manager, 1, older, {}, {"n": 1})
    checkpoint.save(manager, 2, _big_state(seed=2, step=2), {}, {"n": 2})
    manager.wait_until_finished()
    damage(str(directory / "2" / "state"))

    with caplog.at_level(logging.WARNING, logger="cxrjax"):
        step, state, _, meta = checkpoint.restore(manager, _big_state(0, 0))
    assert (step, meta) == (1, {"n": 1})
    _assert_same(state, older)
    assert f"checkpoint 2 in {directory}" in caplog.text and says in caplog.text
    assert sorted(os.listdir(directory)) == ["1", "2.unreadable"]  # kept for inspection
    assert manager.all_steps() == [1]


def test_restore_of_a_named_unreadable_step_is_a_one_line_error(tmp_path):
    directory = tmp_path / "ckpt"
    manager = checkpoint.open_manager(str(directory), keep=3)
    checkpoint.save(manager, 3, _state(), {}, {})
    manager.wait_until_finished()
    truncate_files(str(directory / "3" / "state"))

    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint 3 in .* is unreadable"):
        checkpoint.restore(manager, _state(), step=3)
    assert os.path.isdir(directory / "3")  # a named step is reported, not moved


def test_restore_of_a_named_step_with_a_flipped_bit_is_a_one_line_error(tmp_path):
    directory = tmp_path / "ckpt"
    manager = checkpoint.open_manager(str(directory), keep=3)
    checkpoint.save(manager, 2, _big_state(seed=2, step=2), {}, {})
    manager.wait_until_finished()
    flip_a_bit(str(directory / "2" / "state"))
    unreadable = r"checkpoint 2 in .* is unreadable: ChecksumMismatch: its \w+ arrays differ"
    with pytest.raises(checkpoint.CheckpointError, match=unreadable):
        checkpoint.restore(manager, _big_state(0, 0), step=2)
    assert os.path.isdir(directory / "2")  # a named step is reported, not moved


def test_a_checkpoint_records_its_arrays_checksums_and_restores_them_unchanged(tmp_path):
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=2)
    saved = _state(seed=3, step=5)
    checkpoint.save(manager, 5, saved, {}, {"stage": "global"})
    manager.wait_until_finished()
    record = manager.restore(5, args=checkpoint.ocp.args.Composite(
        meta=checkpoint.ocp.args.JsonRestore()))["meta"]
    assert record[checkpoint.CHECKSUMS] == checksums.state_checksums(saved)
    assert set(record[checkpoint.CHECKSUMS]) == {"step", "params", "batch_stats", "opt_state"}
    step, state, _, meta = checkpoint.restore(manager, _state())
    assert step == 5 and meta == {"stage": "global"}
    _assert_same(state, saved)


def test_a_checkpoint_saved_without_checksums_restores_and_says_so_once(tmp_path, caplog,
                                                                        monkeypatch):
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=3)
    for step in (1, 2):  # as an older cxrjax wrote them: no checksums in the record
        manager.save(step, force=True, args=checkpoint.ocp.args.Composite(
            state=checkpoint.ocp.args.StandardSave(_state(seed=step, step=step)),
            data=checkpoint.ocp.args.JsonSave({"state": {}}),
            meta=checkpoint.ocp.args.JsonSave({"stage": "global"})))
    manager.wait_until_finished()
    monkeypatch.setattr(checkpoint, "_said_unchecked", False)

    with caplog.at_level(logging.INFO, logger="cxrjax"):
        for step in (2, 1):
            restored = checkpoint.restore(manager, _state(), step=step)
            assert restored[0] == step and restored[3] == {"stage": "global"}
            _assert_same(restored[1], _state(seed=step, step=step))
    assert caplog.text.count("saved without array checksums") == 1


def test_restore_of_an_empty_directory_is_none(tmp_path):
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=2)
    assert checkpoint.restore(manager, _state()) is None


def test_a_checkpoint_directory_that_cannot_be_made_is_a_one_line_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(checkpoint.CheckpointError, match="cannot create checkpoint directory"):
        checkpoint.open_manager(str(tmp_path / "a_file" / "ckpt"), keep=2)


@flax.struct.dataclass
class _StateWithRng:
    """TrainState as checkpoints before this change saved it: with an (unused) rng key."""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def test_a_checkpoint_of_the_old_state_with_rng_restores_and_the_run_goes_on(tmp_path):
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=3)
    new = _state(seed=1, step=4)
    old = _StateWithRng(step=new.step, params=new.params, batch_stats=new.batch_stats,
                        opt_state=new.opt_state, rng=jax.random.PRNGKey(0))
    checkpoint.save(manager, 4, old, {}, {"stage": "global"})
    manager.wait_until_finished()

    step, state, _, _ = checkpoint.restore(manager, _state())
    assert step == 4 and isinstance(state, train_step.TrainState)
    _assert_same(state, new)
    checkpoint.save(manager, 5, state.replace(step=state.step + 1), {}, {})  # resumed: saves go on
    manager.wait_until_finished()
    assert int(checkpoint.restore(manager, _state())[1].step) == 5


def test_a_checkpoint_with_a_nested_field_since_removed_passes_its_checksums(tmp_path):
    # Its checksums were saved over the whole state, the removed field's too: the restore
    # compares the template's fields and reads the removed one only to drop it.
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=3)
    kept = {"w": np.arange(6, dtype=np.float32)}
    gone = {"mu": (np.ones(3, np.float32), {"nu": np.zeros(2, np.float32)})}
    checkpoint.save(manager, 1, {**kept, "old": gone}, {}, {})
    checkpoint.wait(manager)
    step, state, _, _ = checkpoint.restore(manager, {"w": np.zeros(6, np.float32)})
    assert step == 1 and np.array_equal(np.asarray(state["w"]), kept["w"])


_TWO_PROCESS_RESTORE = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[3]}", num_processes=2,
                           process_id=int(sys.argv[2]))
import numpy as np
from cxrjax.io import checkpoint
manager = checkpoint.open_manager(sys.argv[1], keep=5)
step, state, _, _ = checkpoint.restore(manager, {"w": np.zeros(1000, np.float32)})
print("restored", step, float(state["w"][-1]), flush=True)
"""


def test_two_processes_set_an_unreadable_step_aside_once_and_restore_the_same_one(tmp_path):
    import socket
    import subprocess
    import sys

    directory = str(tmp_path / "ckpt")
    manager = checkpoint.open_manager(directory, keep=5)
    for step in (10, 20):
        checkpoint.save(manager, step, {"w": np.arange(1000, dtype=np.float32) + step}, {}, {})
        manager.wait_until_finished()
    truncate_files(os.path.join(directory, "20", "state"))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root,
           "XLA_FLAGS": xla_flags(devices=1)}
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_RESTORE, directory, str(i),
                               str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "restored 10 1009.0" in out, out[-3000:]
    assert sorted(os.listdir(directory)) == ["10", "20.unreadable"]


def test_a_replicated_state_saves_in_one_process_without_a_program_per_array(tmp_path):
    """One process holding a replicated state on 2 devices writes it without orbax's
    replica-parallel slicing (an eager program per array shape and device), and restores it."""
    from helpers import count_compiles
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    replicated = NamedSharding(Mesh(np.array(jax.devices()[:2]), ("data",)), PartitionSpec())
    saved = jax.device_put(_state(seed=3, step=5), replicated)
    manager = checkpoint.open_manager(str(tmp_path / "ckpt"), keep=2)
    with count_compiles() as compiles:
        checkpoint.save(manager, 5, saved, {}, {})
        checkpoint.wait(manager)
    assert compiles["slice"] == 0, compiles
    _assert_same(checkpoint.restore(manager, _state(seed=4))[1], saved)
