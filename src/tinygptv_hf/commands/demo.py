"""`tinygptv demo`: train all four stages on a synthetic world on CPU and show what the model learned."""


def add_parser(subparsers):
    parser = subparsers.add_parser("demo", help="train the four stages on bundled synthetic data and evaluate")
    parser.add_argument("--output", default="demo-output", help="folder for data, checkpoints, plots, summary.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps per stage: checks the pipeline (CI)")
    parser.set_defaults(run=run)


def run(args):
    from ..demo import run_demo

    run_demo(args.output, seed=args.seed, quick=args.quick)
