"""`tinygptv eval`: score a checkpoint on the paper's benchmarks (and OK-VQA, RefCOCO*) in both scoring modes.

Every file the run needs is checked before the model loads; each finished batch is saved to a predictions file
(JSON lines) at once, and `--resume` continues an interrupted run from it."""

import sys
from pathlib import Path

from ..evaluation.benchmarks import BENCHMARKS, PAPER_BENCHMARKS

DTYPES = ("float32", "bfloat16", "float16")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on benchmarks, scored by the original harness's rules and the official ones",
        description=(
            "Each benchmark is read from DATA_DIR/<name>/ holding its files as released (docs/evaluation.md). "
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
        "--predictions",
        help="JSON-lines file each finished item is saved to as the run goes (default: OUTPUT with the suffix "
        ".predictions.jsonl)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in the predictions file: items already there are not run again",
    )
    parser.add_argument(
        "--model-name", help="name in the model-index block (default: MODEL's last path part)"
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.set_defaults(run=run)


def run(args):
    from ..evaluation import (
        MODES,
        PredictionLog,
        benchmark_result,
        load_benchmarks,
        parse_benchmarks,
        result_key,
        write_results,
    )

    for name in ("limit", "batch_size", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    inputs = load_benchmarks(parse_benchmarks(args.benchmark), Path(args.data_dir), args.limit)
    model_path = Path(args.model)
    settings = {
        "model": str(model_path.resolve()) if model_path.exists() else args.model,
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
    }
    predictions = Path(args.predictions or Path(args.output).with_suffix(".predictions.jsonl"))
    with PredictionLog.open(predictions, settings, resume=args.resume) as log:
        done = {result_key(b, split): log.finished(b, split, samples) for b, split, samples in inputs}
        if any(len(done[result_key(b, split)]) < len(samples) for b, split, samples in inputs):
            try:
                _predict(args, inputs, done, log)
            except KeyboardInterrupt:
                print(
                    f"\nInterrupted: {len(log.records)} items are saved in {predictions}; run the same command "
                    "with --resume to continue.",
                    file=sys.stderr,
                )
                return 130
        runs = [
            benchmark_result(b, split, log.records_for(b, split, samples)) for b, split, samples in inputs
        ]
    settings = {
        "decoding": "greedy",
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "dtype": args.dtype,
    }
    write_results(args.output, args.model_name or model_path.name, settings, runs)
    print(f"{'benchmark':<16}{'samples':>8}" + "".join(f"{mode:>10}" for mode in MODES) + f"{'AUROC':>8}")
    for run_result in runs:
        summary = run_result["summary"]
        scores = "".join(f"{summary[mode]['accuracy']:>10.2f}" for mode in MODES)
        auroc = summary["standard"].get("roc_auc")
        print(
            f"{run_result['key']:<16}{summary['num_samples']:>8}{scores}"
            + ("" if auroc is None else f"{auroc:>8.4f}")
        )
    print(
        "paper = the original harness's rules (quirks included); standard = the official rules, which add "
        f"Hateful Memes' AUROC. Wrote {args.output}; every item's output is in {predictions}"
    )


def _predict(args, inputs, done, log):
    """Run every item not saved yet, saving each batch as it finishes."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..evaluation import predict_batches, result_key

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(
        device
    )
    model.eval()
    processor = AutoProcessor.from_pretrained(args.model)
    for benchmark, split, samples in inputs:
        batches = predict_batches(
            model,
            processor,
            benchmark,
            split,
            samples,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            skip=done[result_key(benchmark, split)],
        )
        for records in batches:
            log.append(records)
