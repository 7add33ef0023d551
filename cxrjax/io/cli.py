"""One flag library for every command-line program: absl, with argparse-style options.

``cxrjax.main`` parses absl flags itself (its config flags need absl's parser). Every other CLI
builds its parser with ``parser()``, absl's argparse bridge, so its options, positionals and
``nargs`` parse exactly as argparse's do, and runs under absl's app with ``run()``; so each
accepts absl's own flags (``--verbosity``, ``--flagfile``, ``--helpfull``, ``--only_check_args``
...) as ``main`` does. A CLI's ``main(argv)`` parses with the same parser, for in-process calls.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging  # noqa: F401 - defines absl's logging flags
from absl.flags import argparse_flags

_ABSL_MODULES = ("absl.app", "absl.logging")


def _absl_flags() -> flags.FlagValues:
    """absl's own flags, without those of whatever else is imported (orbax's, TFDS's,
    ``cxrjax.main``'s): every CLI accepts the same set, and none collides with its options."""
    own = flags.FlagValues()
    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        if module in _ABSL_MODULES:
            for flag in defined:
                own[flag.name] = flag
    return own


def parser(prog: str, description: str) -> argparse_flags.ArgumentParser:
    """A CLI's parser: the options it adds, plus absl's flags (listed by ``--helpfull``)."""
    return argparse_flags.ArgumentParser(prog=prog, description=description,
                                         inherited_absl_flags=_absl_flags())


def run(build_parser: Callable[[], argparse.ArgumentParser],
        main: Callable[[argparse.Namespace], int]) -> None:
    """Runs ``main(args)`` under absl's app and exits with what it returns.

    Bad flags exit with argparse's code 2 and ``--help`` with 0, as before. absl's app puts its
    log handler on the root logger at INFO; ``main`` gets the logging there was before (each
    CLI sets up its own), so what it prints on stderr does not change.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def parse(argv: list[str]) -> argparse.Namespace:
        args = build_parser().parse_args(argv[1:])
        flags.FLAGS.mark_as_parsed()  # app.run asks; the parser marked only absl's own flags
        return args

    def main_with_own_logging(args: argparse.Namespace) -> int:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        for handler in [h for h in handlers if h not in root.handlers]:
            root.addHandler(handler)
        root.setLevel(level)
        return main(args)

    app.run(main_with_own_logging, flags_parser=parse)
