"""The ``crossmodalreg`` command line: the same registration, landmark statistics and validation as the modules.

Each sub-command lives in its own module that defines ``add_parser(subparsers)``; the parser's ``func``
takes the parsed arguments and returns the exit code. Bad input prints one line ``crossmodalreg: error: ...``
and exits with 2, having written nothing; a failed registration exits 3; SIGINT/SIGTERM exit 130/143
(:mod:`.signals`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import warnings

from .errors import CrossModalRegError, RegistrationCancelled, RegistrationFailed

# (module, description): each module has add_parser(subparsers).
SUBCOMMAND_MODULES = [
    "CrossModalRegLib.commands.register_cmd",
    "CrossModalRegLib.commands.demo_cmd",
    "CrossModalRegLib.commands.landmarks_cmd",
    "CrossModalRegLib.commands.validate_cmd",
    "CrossModalRegLib.commands.benchmark_cmd",
    "CrossModalRegLib.commands.batch_cmd",
    "CrossModalRegLib.commands.info_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="crossmodalreg",
        description="Cross-modality image registration, landmark statistics and validation (headless CrossModalReg).",
    )
    parser.add_argument("--version", action="version", version=f"crossmodalreg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that sub-command is not part of this build yet
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    from . import signals

    parser = build_parser()
    args = parser.parse_args(argv)
    with signals.installed(), _preset_alias_notes():
        return _run(args)


@contextlib.contextmanager
def _preset_alias_notes():
    """A former preset name (``presets.ALIASES``) prints one note line on stderr, once, instead of a warning."""
    from .presets import PresetAliasWarning

    with warnings.catch_warnings():
        shown, noted = warnings.showwarning, set()

        def show(message, category, *rest, **kw):
            if not issubclass(category, PresetAliasWarning):
                shown(message, category, *rest, **kw)
            elif str(message) not in noted:
                noted.add(str(message))
                print(f"crossmodalreg: note: {message}", file=sys.stderr)

        warnings.simplefilter("always", PresetAliasWarning)
        warnings.showwarning = show
        yield


def _run(args) -> int:
    from . import signals

    try:
        return int(args.func(args) or 0)
    except CrossModalRegError as exc:
        print(f"crossmodalreg: error: {exc}", file=sys.stderr)
        return 2
    except RegistrationFailed as exc:
        print(f"crossmodalreg: registration failed: {exc}", file=sys.stderr)
        return 3
    except (RegistrationCancelled, KeyboardInterrupt) as exc:
        if isinstance(exc, RegistrationCancelled) and signals.received() is None:
            print("crossmodalreg: cancelled", file=sys.stderr)
            return 130
        signum = signals.received() or signal.SIGINT
        name = signal.Signals(signum).name
        print(f"crossmodalreg: interrupted by {name}: stopped, nothing half-written left behind", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
