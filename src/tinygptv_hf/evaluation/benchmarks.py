"""The benchmarks the harness knows, as data: where their files are, which metric scores them, how they are named
on the Hub, and whether answers are generated or ranked."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import loaders
from .prompts import generation_prompt, ranking_prompt
from .samples import Sample


@dataclass(frozen=True)
class Benchmark:
    """`ranking`: answers are chosen among `Sample.choices` by likelihood instead of generated; `auroc`: the
    standard mode also scores the area under the ROC curve of P(yes) against P(no) at the answer position."""

    name: str
    title: str
    load: Callable[[Path, str], list[Sample]]
    splits: tuple[str, ...]
    metric: str
    dataset_type: str
    task_type: str = "visual-question-answering"
    task_name: str = "Visual Question Answering"
    ranking: bool = False
    auroc: bool = False

    def prompt(self, sample: Sample) -> str:
        return (ranking_prompt if self.ranking else generation_prompt)(sample.question)


_REFERRING = dict(
    metric="refcoco", task_type="image-text-to-text", task_name="Referring Expression Comprehension"
)

BENCHMARKS = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark("gqa", "GQA (balanced)", loaders.load_gqa, ("testdev",), "gqa", "gqa"),
        Benchmark("vsr", "VSR (zero-shot)", loaders.load_vsr, ("test",), "vsr", "cambridgeltl/vsr_zeroshot"),
        Benchmark("iconqa", "IconQA (choose_txt)", loaders.load_iconqa, ("val",), "iconqa", "iconqa", ranking=True),
        Benchmark("vizwiz", "VizWiz VQA", loaders.load_vizwiz, ("val",), "vizwiz", "vizwiz"),
        Benchmark("hm", "Hateful Memes", loaders.load_hateful_memes, ("dev",), "hateful_memes", "hateful_memes",
                  auroc=True),
        Benchmark("okvqa", "OK-VQA", loaders.load_okvqa, ("val",), "okvqa", "ok_vqa"),
        Benchmark("refcoco", "RefCOCO", loaders.refcoco_loader("refs(unc).p"), ("val", "testA", "testB"),
                  dataset_type="refcoco", **_REFERRING),
        Benchmark("refcoco+", "RefCOCO+", loaders.refcoco_loader("refs(unc).p"), ("val", "testA", "testB"),
                  dataset_type="refcoco+", **_REFERRING),
        Benchmark("refcocog", "RefCOCOg", loaders.refcoco_loader("refs(umd).p"), ("val", "test"),
                  dataset_type="refcocog", **_REFERRING),
    )
}  # fmt: skip

PAPER_BENCHMARKS = ("gqa", "vsr", "iconqa", "vizwiz", "hm")


def parse_benchmarks(text: str) -> list[tuple[Benchmark, str]]:
    """`gqa,refcoco:testA,...` to (benchmark, split) pairs; a bare name means its first split."""
    selected = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, split = item.partition(":")
        if name not in BENCHMARKS:
            raise ValueError(f"Unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}.")
        benchmark = BENCHMARKS[name]
        split = split or benchmark.splits[0]
        if split not in benchmark.splits:
            raise ValueError(f"{name} has splits {', '.join(benchmark.splits)}, not {split!r}.")
        selected.append((benchmark, split))
    if not selected:
        raise ValueError("No benchmark given.")
    return selected


def result_key(benchmark: Benchmark, split: str) -> str:
    """`refcoco:testA`, or the bare name for a benchmark with a single split."""
    return benchmark.name if len(benchmark.splits) == 1 else f"{benchmark.name}:{split}"
