"""The tables of results files, each by its own benchmark's report; with `--docs`, every results block of a page
(`<!-- results: benchmarks/results/X.json ... -->` up to `<!-- end results -->`) rewritten from the files it
names, so that each figure of docs/benchmarks.md comes from a run kept in the repository.

    python benchmarks/report.py benchmarks/results/*.json     # print the tables
    python benchmarks/report.py --docs docs/benchmarks.md      # rewrite the page's results blocks
"""

import argparse
import json
from pathlib import Path

import inference
import interleaved
import llamacpp
from _common import write_docs

REPORTS = {"inference": inference.report, "interleaved": interleaved.report, "llamacpp": llamacpp.report}


def report(sessions: list[dict]) -> str:
    """The tables of `sessions`, which must come from one benchmark (a block of docs merges them into one table)."""
    kinds = {session.get("benchmark") for session in sessions}
    if len(kinds) != 1 or not kinds <= set(REPORTS):
        raise ValueError(
            f"results files of one benchmark ({sorted(REPORTS)}) expected, got {sorted(map(str, kinds))}"
        )
    return REPORTS[kinds.pop()](sessions)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--docs", type=Path, help="a Markdown page whose results blocks to rewrite")
    args = parser.parse_args(argv)
    if not args.results and not args.docs:
        parser.error("name results files, or a page with --docs")
    if args.results:
        print(report([json.loads(path.read_text()) for path in args.results]))
    if args.docs:
        print(f"rewrote {args.docs}: {write_docs(args.docs, report)}")


if __name__ == "__main__":
    main()
