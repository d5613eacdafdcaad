"""`tinygptv` console command. Each subcommand lives in `tinygptv_hf.commands.<name>` and adds its own parser."""

import argparse
import importlib
import sys

COMMANDS = ("init",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygptv", description="TinyGPT-V on the Hugging Face stack.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"tinygptv_hf.commands.{name}").add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as error:
        print(f"tinygptv {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
