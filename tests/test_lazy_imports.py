"""The CLIs and the training loop start without matplotlib or scikit-learn: those load when a
figure is drawn or a baseline fitted, so ``--help``, a refused command and a run's first step
do not wait ~1 s for them."""

import subprocess
import sys

from helpers import cli_env

_CHECK = """
import sys
import cxrjax.evaluate, cxrjax.localize, cxrjax.main, cxrjax.predict, cxrjax.train
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"matplotlib", "sklearn"})
print(",".join(loaded))
"""


def test_the_clis_and_the_loop_import_neither_matplotlib_nor_scikit_learn():
    done = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True,
                          timeout=120, env=cli_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "", done.stdout
