"""The torchvision port: strict key/shape checks, file formats, and loading without torch."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cxrjax.models import create_classifier, port


@pytest.fixture(scope="module")
def r18_sd(tv_model):
    return {k: v.numpy() for k, v in tv_model("resnet18").state_dict().items()}


def _leaves_equal(a, b):
    fa, fb = port._flatten(a), port._flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def test_port_refuses_a_renamed_key_naming_both_names(r18_sd):
    sd = dict(r18_sd)
    sd["layer2.0.conv1.weights"] = sd.pop("layer2.0.conv1.weight")
    with pytest.raises(ValueError, match=r"missing: layer2\.0\.conv1\.weight.*unused: "
                                         r"layer2\.0\.conv1\.weights"):
        port.torchvision_to_flax("resnet18", sd)


def test_port_refuses_a_missing_key_naming_it(r18_sd):
    sd = dict(r18_sd)
    del sd["layer4.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing: layer4\.1\.bn2\.running_var"):
        port.torchvision_to_flax("resnet18", sd)


def test_port_refuses_an_extra_key_naming_it(r18_sd):
    sd = dict(r18_sd, **{"layer5.0.conv1.weight": np.zeros((3, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"unused: layer5\.0\.conv1\.weight"):
        port.torchvision_to_flax("resnet18", sd)


def test_port_refuses_a_wrong_shape_naming_it(r18_sd):
    sd = dict(r18_sd)
    sd["layer3.1.conv2.weight"] = np.zeros((256, 256, 1, 1), np.float32)
    with pytest.raises(ValueError,
                       match=r"wrong shape: layer3\.1\.conv2\.weight: \(256, 256, 1, 1\)"):
        port.torchvision_to_flax("resnet18", sd)


def test_port_refuses_architectures_without_torchvision_counterpart():
    with pytest.raises(ValueError, match="resnet_tiny.*no torchvision counterpart"):
        port.torchvision_to_flax("resnet_tiny", {})


def test_port_accepts_old_densenet_key_style(tv_model, ported):
    sd = tv_model("densenet121").state_dict()
    old = {k.replace(".norm1.", ".norm.1.").replace(".norm2.", ".norm.2.")
           .replace(".conv1.", ".conv.1.").replace(".conv2.", ".conv.2."): v
           for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    _leaves_equal(port.torchvision_to_flax("densenet121", old), ported("densenet121"))


def test_port_reads_head_size_and_ignores_num_batches_tracked(r18_sd):
    sd = dict(r18_sd, **{"fc.weight": np.ones((14, 512), np.float32),
                         "fc.bias": np.zeros(14, np.float32)})
    assert any(k.endswith("num_batches_tracked") for k in sd)
    v = port.torchvision_to_flax("resnet18", sd)
    kernel = v["params"]["head"]["fc"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel), np.ones((512, 14)))


def test_load_torch_file_reads_pth_checkpoint_wrappers_and_safetensors(tmp_path, r18_sd):
    sd = {k: torch.from_numpy(v) for k, v in r18_sd.items()}
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
               tmp_path / "wrapped.pth.tar.pt")
    port.write_safetensors(str(tmp_path / "w.safetensors"), r18_sd)
    for name in ("plain.pth", "wrapped.pth.tar.pt", "w.safetensors"):
        loaded = port.load_torch_file(str(tmp_path / name))
        assert loaded.keys() == r18_sd.keys(), name
        for k, v in loaded.items():
            np.testing.assert_array_equal(np.asarray(v), r18_sd[k])


def test_load_torch_file_refuses_missing_unknown_and_pickled_objects(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        port.load_torch_file(str(tmp_path / "nope.pth"))
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown weights format"):
        port.load_torch_file(str(tmp_path / "w.h5"))
    torch.save({"obj": _Arbitrary()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(ValueError, match="not a weights-only torch file"):
        port.load_torch_file(str(tmp_path / "evil.pth"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nojso")
    with pytest.raises(ValueError, match="not a safetensors file"):
        port.load_torch_file(str(tmp_path / "bad.safetensors"))


def test_read_safetensors_decodes_a_hand_built_file(tmp_path):
    import json
    import struct

    import ml_dtypes

    f32 = struct.pack("<3f", 1.5, -2.0, 0.25)
    bf16 = np.array([[1.0, -3.0]], ml_dtypes.bfloat16).tobytes()
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                         "b": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [12, 16]}})
    blob = header.encode()
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + f32 + bf16)
    out = port.read_safetensors(str(tmp_path / "h.safetensors"))
    np.testing.assert_array_equal(out["a"], [1.5, -2.0, 0.25])
    assert out["b"].dtype == ml_dtypes.bfloat16 and out["b"].shape == (1, 2)
    np.testing.assert_array_equal(out["b"].astype(np.float32), [[1.0, -3.0]])


class _Arbitrary:
    """An object torch.load(weights_only=True) must refuse to unpickle."""


def test_saved_variables_load_in_a_process_without_torch(tmp_path, ported):
    variables = ported("resnet18")
    path = str(tmp_path / "r18.npz")
    port.save_variables(path, variables, arch="resnet18")
    x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = jax.jit(create_classifier("resnet18").apply)(variables, jnp.asarray(x))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import jax, numpy as np
        from cxrjax.models import create_classifier
        from cxrjax.models.port import load_variables, variables_arch
        assert variables_arch({path!r}) == "resnet18"
        v = load_variables({path!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.save({str(tmp_path / 'out.npy')!r}, jax.jit(create_classifier("resnet18").apply)(v, x))
        assert "torch" not in sys.modules or sys.modules["torch"] is None
    """)
    # Compiled as here (tests/models/conftest.py's setting), for bit-identical outputs.
    quick = jax.config.values["jax_disable_most_optimizations"]
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1" if quick else "0"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, env=env)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.asarray(expected))


def test_save_and_load_variables_refuse_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=r"\.npz"):
        port.save_variables(str(tmp_path / "w.msgpack"), {"params": {}})
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        port.load_variables(str(tmp_path / "absent.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: not a cxrjax variables file"):
        port.load_variables(str(tmp_path / "junk.npz"))


def test_replace_head_keeps_trunk_and_statistics(ported):
    variables = ported("resnet18")
    new = port.replace_head(variables, "resnet18", 14, jax.random.key(0, impl="rbg"))
    assert new["params"]["head"]["fc"]["kernel"].shape == (512, 14)
    assert new["params"]["trunk"] is variables["params"]["trunk"]
    _leaves_equal(new["batch_stats"], variables["batch_stats"])
    assert variables["params"]["head"]["fc"]["kernel"].shape == (512, 1000)  # input untouched


def test_port_script_converts_a_checkpoint_file(tmp_path, r18_sd, ported):
    import importlib.util

    torch.save({k: torch.from_numpy(v) for k, v in r18_sd.items()}, tmp_path / "r18.pth")
    path = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "port_torchvision.py")
    spec = importlib.util.spec_from_file_location("port_torchvision", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = str(tmp_path / "out" / "r18.npz")
    src = str(tmp_path / "r18.pth")
    assert script.main(["--arch", "resnet18", "--src", src, "--out", out]) == 0
    _leaves_equal(port.load_variables(out), ported("resnet18"))
    assert port.variables_arch(out) == "resnet18"
    assert script.main(["--arch", "resnet_tiny", "--src", str(tmp_path / "r18.pth"),
                        "--out", out]) == 1
    assert script.main(["--arch", "resnet18", "--src", str(tmp_path / "none.pth"),
                        "--out", out]) == 1


def test_truncated_weight_files_are_refused_with_their_name(tmp_path, r18_sd, ported):
    npz = tmp_path / "r18.npz"
    port.save_variables(str(npz), ported("resnet18"), arch="resnet18")
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(ValueError, match="r18.npz"):
        port.load_variables(str(npz))
    pth = tmp_path / "r18.pth"
    torch.save({k: torch.as_tensor(v) for k, v in r18_sd.items()}, pth)
    pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(ValueError, match="r18.pth"):
        port.load_torch_file(str(pth))
