"""The benchmarks end to end on the tiny preset: checkpoints from the mode table, each mode in its own process,
drift against fp32, and the docs page's results block written from the results file by the report command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def bench(script: str, *arguments: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_an_unknown_mode_is_an_error_that_names_the_table():
    import modes

    with pytest.raises(ValueError, match="Unknown benchmark mode 'int4'.*benchmarks/modes.py"):
        modes.mode("int4")
    assert all(entry.quantization is None or callable(entry.quantization) for entry in modes.MODES.values())


@pytest.mark.slow  # eleven Python processes: ~1 min on an idle 2-core machine
def test_tiny_drift_run_writes_the_docs_table_from_its_results_file(tmp_path):
    root, results = tmp_path / "checkpoints", tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    common = [
        "--preset",
        "tiny",
        "--root",
        str(root),
        "--modes",
        "fp32",
        "cpu-int8",
        "phi-fp32",
        "phi-cpu-int8",
    ]
    bench("inference.py", "prepare", *common, cwd=tmp_path)
    assert sorted(path.name for path in root.iterdir()) == [
        "tiny-bf16",
        "tiny-bf16-TinyGPTVCpuInt8Config",
        "tiny-phi",
        "tiny-phi-TinyGPTVCpuInt8Config",
    ]
    bench("inference.py", "drift", *common, "--output", str(results / "drift.json"), cwd=tmp_path)
    session = json.loads((results / "drift.json").read_text())
    rows = {row["mode"]: row for row in session["modes"]}
    assert list(rows) == ["fp32", "phi-fp32", "cpu-int8", "phi-cpu-int8"]  # each reference before its modes
    for name in ("cpu-int8", "phi-cpu-int8"):  # int8 weights: close to fp32, not equal
        assert 0 < rows[name]["drift"]["relative_rms"] < 0.05
        assert rows[name]["drift"]["top1_agreement"] > 0.8
    assert rows["cpu-int8"]["footprint_gb"] < rows["fp32"]["footprint_gb"] / 2

    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    page.write_text(
        "before\n<!-- results: benchmarks/results/drift.json -->\nold figures\n<!-- end results -->\nafter\n"
    )
    bench("report.py", "--docs", str(page), cwd=tmp_path)
    text = page.read_text()
    assert "old figures" not in text and text.startswith("before\n") and text.endswith("after\n")
    line = next(line for line in text.splitlines() if line.startswith("| cpu-int8 |"))
    assert f"{rows['cpu-int8']['drift']['relative_rms']:.2%}" in line
    assert bench("report.py", str(results / "drift.json"), cwd=tmp_path) in text


def test_report_refuses_results_of_two_benchmarks(tmp_path):
    import report

    with pytest.raises(ValueError, match="one benchmark"):
        report.report([{"benchmark": "inference", "modes": []}, {"benchmark": "llamacpp", "rows": []}])
