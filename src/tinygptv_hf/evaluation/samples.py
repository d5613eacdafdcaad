"""One evaluation sample, whatever the benchmark."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """`question` is the text after the image placeholder (task identifier included), exactly as the original
    harness built it; `reference` is what the benchmark's metric compares against (JSON-serialisable);
    `choices` is set for benchmarks answered by likelihood ranking instead of generation."""

    question_id: str
    image: Path
    question: str
    reference: Any
    choices: tuple[str, ...] = ()
