"""The persistent compilation cache: on by default, moved or switched off by config or
environment (the environment wins), and really read back by a second process."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from cxrjax.io import compilation_cache

KEYS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def jax_cache_settings(monkeypatch, tmp_path):
    """A private HOME, no CXRJAX_COMPILE_CACHE, and JAX's cache settings restored afterwards."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
    saved = {k: jax.config.values[k] for k in KEYS}
    yield tmp_path
    for key, value in saved.items():
        jax.config.update(key, value)
    jax_cache.reset_cache()


def test_the_cache_is_on_by_default_in_a_versioned_folder_of_the_users_cache(jax_cache_settings):
    path = compilation_cache.enable()
    expected = jax_cache_settings / ".cache" / "cxrjax" / "jax_cache" / f"jax-{jax.__version__}"
    assert path == str(expected) and expected.is_dir()
    assert jax.config.values["jax_enable_compilation_cache"] is True
    assert jax.config.values["jax_compilation_cache_dir"] == str(expected)
    assert jax.config.values["jax_persistent_cache_min_compile_time_secs"] == \
        compilation_cache.MIN_COMPILE_TIME_S


def test_the_configured_folder_moves_the_cache(jax_cache_settings):
    path = compilation_cache.enable(str(jax_cache_settings / "elsewhere"))
    assert path == str(jax_cache_settings / "elsewhere" / f"jax-{jax.__version__}")
    assert jax.config.values["jax_compilation_cache_dir"] == path


@pytest.mark.parametrize("configured", ["", None])
def test_an_empty_configured_folder_switches_the_cache_off(jax_cache_settings, configured):
    assert compilation_cache.enable(configured) is None
    assert jax.config.values["jax_enable_compilation_cache"] is False
    assert not (jax_cache_settings / ".cache").exists()


def test_the_environment_variable_wins_over_the_configured_folder(jax_cache_settings,
                                                                  monkeypatch):
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(jax_cache_settings / "from_env"))
    path = compilation_cache.enable(str(jax_cache_settings / "from_config"))
    assert path.startswith(str(jax_cache_settings / "from_env"))
    assert not (jax_cache_settings / "from_config").exists()


@pytest.mark.parametrize("word", ["off", "OFF", "0", "none", "false", "no"])
def test_off_in_the_environment_switches_off_even_a_configured_folder(jax_cache_settings,
                                                                      monkeypatch, word):
    monkeypatch.setenv(compilation_cache.ENV_VAR, word)
    assert compilation_cache.enable(str(jax_cache_settings / "configured")) is None
    assert jax.config.values["jax_enable_compilation_cache"] is False
    assert not (jax_cache_settings / "configured").exists()


def test_the_environment_can_switch_on_a_cache_the_config_switched_off(jax_cache_settings,
                                                                       monkeypatch):
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(jax_cache_settings / "from_env"))
    assert compilation_cache.enable("") is not None


def test_an_uncreatable_folder_is_a_warning_and_the_run_goes_on_without_cache(
        jax_cache_settings, caplog):
    blocker = jax_cache_settings / "a_file"
    blocker.write_text("not a folder")
    with caplog.at_level("WARNING", logger="cxrjax"):
        assert compilation_cache.enable(str(blocker / "cache")) is None
    assert "compilation cache off" in caplog.text and compilation_cache.ENV_VAR in caplog.text
    assert jax.config.values["jax_enable_compilation_cache"] is False


# A process that turns the default cache on, compiles one function and says what the cache did.
_PROCESS = textwrap.dedent("""
    import json, jax, jax.numpy as jnp
    from cxrjax.io import compilation_cache
    counts = {}
    jax.monitoring.register_event_listener(
        lambda event, **_: counts.__setitem__(event, counts.get(event, 0) + 1))
    path = compilation_cache.enable(min_compile_time_s=0)
    jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0))(jnp.ones((64, 64))).block_until_ready()
    print(json.dumps({"path": path,
                      "hits": counts.get("/jax/compilation_cache/cache_hits", 0),
                      "writes": counts.get("/jax/compilation_cache/cache_misses", 0),
                      "entries": len(compilation_cache.entries(path)) if path else 0}))
""")


def _run_process(home, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != compilation_cache.ENV_VAR}
    out = subprocess.run([sys.executable, "-c", _PROCESS], capture_output=True, text=True,
                         env={**environ, "HOME": str(home), "JAX_PLATFORMS": "cpu", **env},
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_first_ones_programs_from_the_default_cache(tmp_path):
    first = _run_process(tmp_path)
    assert first["path"].startswith(str(tmp_path / ".cache" / "cxrjax" / "jax_cache"))
    assert first["writes"] >= 1 and first["hits"] == 0 and first["entries"] >= 1
    second = _run_process(tmp_path)
    assert second["hits"] >= 1 and second["writes"] == 0
    assert second["entries"] == first["entries"]


def test_a_process_with_the_cache_off_writes_nothing_and_loads_nothing(tmp_path):
    for _ in range(2):
        run = _run_process(tmp_path, CXRJAX_COMPILE_CACHE="off")
        assert run == {"path": None, "hits": 0, "writes": 0, "entries": 0}
    assert not (tmp_path / ".cache").exists()
