"""`tinygptv demo`: train all four stages on a synthetic world on CPU and show what the model learned."""

import logging


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo", help="train the four stages on bundled synthetic data and evaluate"
    )
    parser.add_argument(
        "--output", default="demo-output", help="folder for data, checkpoints, plots, summary.json"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a few steps per stage: checks the pipeline (CI)"
    )
    parser.set_defaults(run=run)


def run(args):
    # peft imports bitsandbytes, which on CPUs with AVX-512 bf16 logs at import that an optional 4-bit kernel
    # package is missing; the demo loads no 4-bit weights, and this import comes before the demo's log file exists.
    logging.getLogger("bitsandbytes").addHandler(logging.NullHandler())
    from ..demo import run_demo

    run_demo(args.output, seed=args.seed, quick=args.quick)
