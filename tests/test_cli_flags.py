"""Every CLI parses with one flag library, absl: the argparse-style ones through absl's
argparse bridge, each under absl's app, so absl's flags work everywhere and the commands users
type parse as before."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags
from absl.flags import argparse_flags

from cxrjax import evaluate, export, localize, predict
from cxrjax.data import prepare, synthetic
from cxrjax.serving import verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each CLI with the fewest arguments it parses (nothing is read before the command runs).
REQUIRED = {
    "cxrjax.main": ["--workdir", "w"],
    "cxrjax.evaluate": ["--predictions", "p.csv"],
    "cxrjax.predict": ["--workdir", "w", "a.png"],
    "cxrjax.localize": ["--workdir", "w"],
    "cxrjax.export": ["--workdir", "w", "--out", "o"],
    "cxrjax.data.prepare": ["--manual_dir", "m", "--data_dir", "d"],
    "cxrjax.data.synthetic": ["--out", "o"],
    "cxrjax.serving.verify": ["d"],
}
ARGPARSE_STYLE = {"cxrjax.evaluate": evaluate, "cxrjax.predict": predict,
                  "cxrjax.localize": localize, "cxrjax.export": export,
                  "cxrjax.data.prepare": prepare, "cxrjax.data.synthetic": synthetic,
                  "cxrjax.serving.verify": verify}

# Runs each case as `python -m MODULE ARGS` does (runpy, as __main__), in a child forked from
# one process that imported the libraries once; prints one JSON list of [rc, stdout, stderr].
_RUN_AS_MAIN = r"""
import json, os, runpy, sys, tempfile
import cxrjax.evaluate, cxrjax.predict, cxrjax.localize, cxrjax.export
import cxrjax.data.prepare, cxrjax.data.synthetic, cxrjax.serving.verify

def run(module, args):
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.modules.pop(module, None)  # executed afresh as __main__, as -m does
        sys.argv = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    err.seek(0)
    return [os.waitstatus_to_exitcode(status), out.read(), err.read()]

print(json.dumps([run(module, args) for module, args in json.loads(sys.argv[1])]))
"""


@pytest.fixture(scope="module")
def run_as_main(tmp_path_factory):
    """Each CLI under absl's app: --help, absl's flags, a bad flag, and a synthetic set."""
    synthetic_out = str(tmp_path_factory.mktemp("synthetic") / "set")
    cases = {}
    for module, required in REQUIRED.items():
        cases[(module, "help")] = [module, ["--help"]]
        cases[(module, "absl")] = [module, [*required, "--verbosity=1", "--only_check_args"]]
        cases[(module, "bad")] = [module, [*required, "--no_such_flag"]]
    cases[("cxrjax.data.synthetic", "run")] = [
        "cxrjax.data.synthetic", ["--out", synthetic_out, "--n", "4", "--size", "32",
                                  "--workers", "0"]]
    done = subprocess.run([sys.executable, "-c", _RUN_AS_MAIN, json.dumps(list(cases.values()))],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(cases, json.loads(done.stdout), strict=True))


@pytest.mark.parametrize("module", sorted(ARGPARSE_STYLE))
def test_each_argparse_style_cli_builds_its_parser_with_absls_bridge(module):
    assert isinstance(ARGPARSE_STYLE[module].build_parser(), argparse_flags.ArgumentParser)


@pytest.mark.parametrize("module", sorted(REQUIRED))
def test_help_exits_0_and_absl_flags_are_accepted_under_absls_app(run_as_main, module):
    rc, out, _ = run_as_main[(module, "help")]
    assert rc == 0
    if module == "cxrjax.main":  # absl's own help: the module's docstring, then its flags
        assert "--workdir" in out and "--config" in out
    else:
        assert out.startswith(f"usage: python -m {module} ")
    # --only_check_args is absl's app's: it stops after parsing, with 0, only under app.run.
    assert run_as_main[(module, "absl")] == [0, "", ""]
    rc, out, err = run_as_main[(module, "bad")]
    assert (rc, out) == (2, "")
    assert "error:" in err.strip().splitlines()[-1] and "no_such_flag" in err


def test_absls_log_handler_does_not_reach_a_clis_stderr(run_as_main):
    """app.run puts absl's handler on the root logger at INFO; a CLI keeps its own logging
    (synthetic's INFO line stays unprinted, as before)."""
    rc, out, err = run_as_main[("cxrjax.data.synthetic", "run")]
    assert rc == 0 and out.startswith("wrote 4 synthetic images (32px)")
    assert err == ""


def test_the_commands_users_type_parse_as_before_and_absl_flags_stay_out_of_the_args():
    verbosity = flags.FLAGS["verbosity"]
    before = verbosity.value
    try:
        args = evaluate.build_parser().parse_args(["--workdir", "A", "B", "--split", "val",
                                                   "--verbosity", "1"])
        assert verbosity.value == 1  # absl's own flag, set by the bridge
    finally:
        verbosity.value = before
    assert (args.workdir, args.split, args.predictions) == (["A", "B"], "val", None)
    assert "verbosity" not in vars(args)
    args = predict.build_parser().parse_args(["--model", "M", "a.png", "b.dcm"])
    assert (args.model, args.images, args.batch_size) == ("M", ["a.png", "b.dcm"], 16)
    args = verify.build_parser().parse_args(["DIR", "--tolerance", "1e-4"])
    assert (args.directory, args.tolerance) == ("DIR", 1e-4)
    args = export.build_parser().parse_args(["--workdir", "W", "--out", "O", "--reference",
                                             "x.png", "y.png"])
    assert (args.reference, args.platforms) == (["x.png", "y.png"], "cpu,cuda,tpu")
    with pytest.raises(SystemExit) as e:  # still one of the two modes, as argparse says
        evaluate.build_parser().parse_args(["--workdir", "A", "--predictions", "p.csv"])
    assert e.value.code == 2
