"""`tinygptv eval`: score a checkpoint on the paper's benchmarks (and OK-VQA, RefCOCO*) in both scoring modes."""

from ..evaluation.benchmarks import BENCHMARKS, PAPER_BENCHMARKS

DTYPES = ("float32", "bfloat16", "float16")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on benchmarks, scored by the original harness's rules and the official ones",
        description=(
            "Each benchmark is read from DATA_DIR/<name>/ (annotation files and an images/ folder). "
            f"Names: {', '.join(BENCHMARKS)}; add :SPLIT for another split (refcoco:testA)."
        ),
    )
    parser.add_argument("model", help="checkpoint folder or Hub id")
    parser.add_argument("--benchmark", default=",".join(PAPER_BENCHMARKS), help="comma-separated benchmarks")
    parser.add_argument("--data-dir", required=True, help="folder holding one sub-folder per benchmark")
    parser.add_argument("--limit", type=int, help="only the first N samples of each benchmark (a quick run)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--output", default="eval_results.json", help="results file with every prediction")
    parser.add_argument(
        "--model-name", help="name in the model-index block (default: MODEL's last path part)"
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.set_defaults(run=run)


def run(args):
    from pathlib import Path

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..evaluation import MODES, evaluate_benchmark, parse_benchmarks, write_results

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}.")
    selected = parse_benchmarks(args.benchmark)
    data_dir = Path(args.data_dir)
    datasets = [
        (benchmark, split, benchmark.load(data_dir / benchmark.name, split)) for benchmark, split in selected
    ]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(
        device
    )
    model.eval()
    processor = AutoProcessor.from_pretrained(args.model)

    runs = [
        evaluate_benchmark(
            model,
            processor,
            benchmark,
            split,
            samples[: args.limit],
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
        )
        for benchmark, split, samples in datasets
    ]
    settings = {
        "decoding": "greedy",
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "dtype": args.dtype,
    }
    write_results(args.output, args.model_name or Path(args.model).name, settings, runs)
    print(f"{'benchmark':<16}{'samples':>8}" + "".join(f"{mode:>10}" for mode in MODES))
    for run_result in runs:
        summary = run_result["summary"]
        scores = "".join(f"{summary[mode]['accuracy']:>10.2f}" for mode in MODES)
        print(f"{run_result['key']:<16}{summary['num_samples']:>8}{scores}")
    print(
        f"paper = the original harness's rules (quirks included); standard = the official rules. Wrote {args.output}"
    )
