"""`tinygptv` console command. Every module in `tinygptv_hf.commands` is one subcommand with an `add_parser`."""

import argparse
import importlib
import pkgutil
import sys

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygptv", description="TinyGPT-V on the Hugging Face stack.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda info: info.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").add_parser(subparsers)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix: bad values or files, a folder or Hub repository that is not there (OSError is
    transformers' word for it), broken training data, a missing optional extra. Anything else is a bug: traceback."""
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    from .data.health import DataBudgetExceeded

    return (
        ValueError,
        OSError,
        DataBudgetExceeded,
        ModuleNotFoundError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )


def main(argv=None) -> int:
    """Run one command; a user error becomes one line on stderr and exit status 2, as argparse's own errors."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except Exception as error:
        if not isinstance(error, user_errors()):
            raise
        message = " ".join(str(error).split())
        print(f"tinygptv {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
