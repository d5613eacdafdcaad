"""llama.cpp beside this project's modes, on the same weights, in one run.

The weights: the stock `PhiForCausalLM` part of the preset (random, float32; TinyGPT-V's q/k LayerNorm and extra
RMSNorm are not in llama.cpp's Phi-2 graph, so only the stock Phi-2 part is compared), written once by `prepare`
as a `save_pretrained` folder, converted by llama.cpp's own `convert_hf_to_gguf.py` (F16; the GPT-2 BPE tokenizer
rebuilt from the vocab file llama.cpp ships) and quantized by its `llama-quantize`. Our modes (`--modes`, any
`phi-*` row of modes.py) load the same folder.

For each GGUF and each of our modes: decode tok/s at batch 1 and prefill of 55 tokens, with 1 and 2 threads
(llama.cpp: `llama-bench -p 55 -n 64`; ours: the timing harness inside `generate`), peak resident memory of a
process that loads the model and computes the logits of a fixed 64-token sequence, and those logits against the
fp32 model's (relative RMS, mean KL, top-1 agreement).

llama.cpp is built once from the `llama-cpp-python` source distribution on PyPI (its only distribution) into
`~/.cache/tinygptv-llamacpp` (about 10 minutes on 2 cores); its Python binding reads the logits from that build.

    python benchmarks/llamacpp.py build
    python benchmarks/llamacpp.py prepare [--preset phi2] [--text-layers N] [--root DIR] [--modes phi-fp32 ...]
    python benchmarks/llamacpp.py run [--formats Q8_0 Q4_K_M Q4_0] [--modes phi-fp32 phi-cpu-int8] --output FILE
    python benchmarks/llamacpp.py report results.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import modes
import torch
from _common import (
    decode_steps,
    logit_drift,
    machine,
    machine_line,
    peak_memory_gb,
    run_isolated,
    table,
    timed_generate,
)
from inference import tensor_bytes
from modes import Sizes

VERSION = "0.3.36"  # llama-cpp-python; it vendors llama.cpp
CACHE = Path(os.environ.get("TINYGPTV_LLAMACPP_CACHE", "~/.cache/tinygptv-llamacpp")).expanduser()
SOURCE = CACHE / f"llama_cpp_python-{VERSION}"
LLAMA_CPP = SOURCE / "vendor" / "llama.cpp"
BIN = LLAMA_CPP / "build" / "bin"
CMAKE = ["-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=ON"]
CMAKE += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
CMAKE += ["-DCMAKE_BUILD_TYPE=Release"]
PROMPT, GENERATED, DRIFT_TOKENS, THREADS = 55, 64, 64, (1, 2)


# ---------------------------------------------------------------------------------------------- llama.cpp


def build() -> dict:
    """Download, unpack and compile llama.cpp's tools once (niced); record the llama.cpp commit."""
    if not LLAMA_CPP.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(CACHE)]
        subprocess.run([*pip, f"llama-cpp-python=={VERSION}"], check=True)
        with tarfile.open(CACHE / f"llama_cpp_python-{VERSION}.tar.gz") as archive:
            archive.extractall(CACHE, filter="data")
    nice = ["nice", "-n", "10"]
    subprocess.run([*nice, "cmake", "-B", "build", *CMAKE], cwd=LLAMA_CPP, check=True)
    targets = ["--target", "llama-bench", "llama-quantize", "llama"]
    subprocess.run([*nice, "cmake", "--build", "build", "-j2", *targets], cwd=LLAMA_CPP, check=True)
    # The binding is pure Python over the library just built; it imports diskcache, which nothing else needs.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--target", str(CACHE / "python"), "diskcache"], check=True
    )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=LLAMA_CPP, capture_output=True, text=True
    ).stdout
    info = {"llama_cpp_python": VERSION, "llama_cpp_commit": commit.strip() or "unknown", "cmake": CMAKE}
    (CACHE / "build.json").write_text(json.dumps(info, indent=1))
    return info


def built() -> dict:
    if not (CACHE / "build.json").exists():
        raise FileNotFoundError(
            f"llama.cpp is not built in {CACHE}: run `python benchmarks/llamacpp.py build` first."
        )
    return json.loads((CACHE / "build.json").read_text())


def gguf_path(root: Path, sizes: Sizes, kind: str) -> Path:
    return root / f"{sizes.name}-phi-{kind}.gguf"


def gpt2_tokenizer():
    """GPT-2's byte-level BPE (Phi-2's tokenizer) rebuilt from the vocab file llama.cpp ships for its tests."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    reader = GGUFReader(LLAMA_CPP / "models" / "ggml-vocab-gpt-2.gguf")
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    merges = [tuple(merge.split(" ", 1)) for merge in reader.get_field("tokenizer.ggml.merges").contents()]
    bpe = Tokenizer(models.BPE({token: i for i, token in enumerate(tokens)}, merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    end = "<|endoftext|>"
    return GPT2TokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end)


def prepare(args) -> None:
    """Our modes' checkpoints (the float32 stock-Phi folder first), then the GGUFs: F16 by llama.cpp's converter,
    the others by its quantizer."""
    built()
    sizes = Sizes(args.preset, args.text_layers)
    modes.prepare(args.root, sizes, ["phi-fp32", *args.modes], str(Path(__file__).with_name("inference.py")))
    folder = modes.float_checkpoint(modes.mode("phi-fp32"), args.root, sizes)
    if not (folder / "tokenizer.json").exists():
        gpt2_tokenizer().save_pretrained(folder)
    f16 = gguf_path(args.root, sizes, "F16")
    if not f16.exists():
        convert = [sys.executable, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f16"]
        subprocess.run([*convert, "--outfile", str(f16)], check=True)
    for kind in args.formats:
        if not gguf_path(args.root, sizes, kind).exists():
            quantize = [
                str(BIN / "llama-quantize"),
                str(f16),
                str(gguf_path(args.root, sizes, kind)),
                kind,
                "2",
            ]
            subprocess.run(quantize, check=True, capture_output=True)


def llama_bench(path: Path) -> dict:
    """`llama-bench`'s tokens/s for prefill (pp55) and decode (tg64) at each thread count: the mean of 3 runs (its
    `avg_ts`; the spread is kept beside it)."""
    command = [str(BIN / "llama-bench"), "-m", str(path), "-t", ",".join(map(str, THREADS))]
    command += ["-p", str(PROMPT), "-n", str(GENERATED), "-r", "3", "-o", "json"]
    runs = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    rates = {}
    for run in runs:
        kind = "prefill" if run["n_prompt"] else "decode"
        rates[f"{kind}_tok_s_{run['n_threads']}t"] = run["avg_ts"]
        rates[f"{kind}_tok_s_{run['n_threads']}t_stddev"] = run["stddev_ts"]
    return rates


def drift_tokens() -> list[int]:
    """The fixed sequence every model's logits are compared on: 64 ids drawn from GPT-2's vocabulary."""
    return torch.randint(0, 50257, (DRIFT_TOKENS,), generator=torch.Generator().manual_seed(0)).tolist()


def gguf_logits(path: Path, out: Path) -> dict:
    """Child process: the GGUF's logits over the fixed sequence, through llama-cpp-python on the build."""
    import numpy
    from llama_cpp import Llama

    model = Llama(str(path), n_ctx=128, n_batch=DRIFT_TOKENS, logits_all=True, n_threads=2, verbose=False)
    model.eval(drift_tokens())
    torch.save(torch.from_numpy(numpy.array(model.scores[:DRIFT_TOKENS], dtype=numpy.float32)), out)
    return peak_memory_gb()


# ---------------------------------------------------------------------------------------------- ours


def our_mode(name: str, args, out: Path) -> dict:
    """Child process: one of our modes on the stock-Phi folder: logits over the fixed sequence, then prefill and
    decode at batch 1 with each thread count, through the same timing harness as inference.py."""
    start = time.perf_counter()
    model = modes.load(name, args.root, Sizes(args.preset, args.text_layers))
    result = {"load_s": time.perf_counter() - start, "size_gib": tensor_bytes(model) / 2**30}
    prompt = torch.tensor([drift_tokens()[:PROMPT]])
    with torch.inference_mode():
        torch.save(model(torch.tensor([drift_tokens()])).logits.float()[0], out)
        result.update(peak_memory_gb())
        for threads in THREADS:
            torch.set_num_threads(threads)
            timed_generate(model, 2, input_ids=prompt[:, :8])  # warm-up at this thread count
            runs = [timed_generate(model, args.new_tokens, input_ids=prompt)[1] for _ in range(args.repeats)]
            steps = [step for stamps in runs for step in decode_steps(stamps)]
            result[f"prefill_tok_s_{threads}t"] = PROMPT / statistics.median(stamps[0] for stamps in runs)
            result[f"decode_tok_s_{threads}t"] = 1 / statistics.median(steps)
    return result


# ---------------------------------------------------------------------------------------------- run


def logits_file(args, row: str) -> Path:
    return args.root / f"{Sizes(args.preset, args.text_layers).name}-llamacpp-{row}-logits.pt"


def child(command: str, row: str, args, env: dict | None = None) -> dict:
    options = ["--root", str(args.root), "--preset", args.preset, "--new-tokens", str(args.new_tokens)]
    options += ["--repeats", str(args.repeats), *modes.text_layers_argv(Sizes(args.preset, args.text_layers))]
    return run_isolated(__file__, [command, row, *options], env=env)


def run(args) -> dict:
    """Our modes first (phi-fp32 is the reference), then each GGUF: llama-bench, then its logits."""
    sizes = Sizes(args.preset, args.text_layers)
    session = {
        "benchmark": "llamacpp",
        "machine": machine(),
        "model": sizes.name,
        "llama_cpp": built(),
        "threads": list(THREADS),
        "rows": [],
    }
    binding = {
        "PYTHONPATH": os.pathsep.join([str(SOURCE), str(CACHE / "python"), os.environ.get("PYTHONPATH", "")]),
        "LLAMA_CPP_LIB_PATH": str(BIN),
    }
    ours = [("ours", name) for name in dict.fromkeys(["phi-fp32", *args.modes])]
    rows = ours + [("llama.cpp", kind) for kind in ["F16", *args.formats]]
    for engine, name in rows:
        row = {"engine": engine, "row": name}
        if engine == "ours":
            row.update(
                what=modes.mode(name).what, **child("ours", name, args, env=dict(modes.mode(name).env))
            )
        else:
            path = gguf_path(args.root, sizes, name)
            row.update(size_gib=path.stat().st_size / 2**30, **llama_bench(path))
            row.update(child("gguf", name, args, env=binding))
        if "error" not in row and row["row"] != "phi-fp32":
            row["drift"] = logit_drift(
                torch.load(logits_file(args, name)), torch.load(logits_file(args, "phi-fp32"))
            )
        session["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.output:
            args.output.write_text(json.dumps(session, indent=1))
    session["load_averages_end"] = list(os.getloadavg())
    if args.output:
        args.output.write_text(json.dumps(session, indent=1))
    return session


def report(sessions: list[dict]) -> str:
    """One table: every llama.cpp format and every one of our modes, on the same weights, same run."""
    parts = []
    for session in sessions:
        end = " / ".join(f"{x:.1f}" for x in session.get("load_averages_end", []))
        end = f"Load average at the end: {end}." if end else "The run had not finished: the rows so far."
        parts.append(
            f"{machine_line(session['machine'])} {end} Model: stock Phi-2 part of "
            f"`{session['model']}`, random weights; llama.cpp {session['llama_cpp']['llama_cpp_commit'][:9]} "
            f"(llama-cpp-python {session['llama_cpp']['llama_cpp_python']}, `-DGGML_NATIVE=ON`). Decode: batch 1 "
            f"(llama.cpp: `llama-bench` tg{GENERATED}; ours: median step of `generate`); prefill: {PROMPT} tokens; "
            f"drift: logits of {DRIFT_TOKENS} fixed tokens against our fp32 (`phi-fp32`)."
        )
        columns = {
            "engine": lambda r: r["engine"],
            "format / mode": lambda r: r["row"],
            "size ": lambda r: f"{r['size_gib']:.2f} GiB",
            **{
                f"decode tok/s, {t} thread{'s' * (t > 1)} ": lambda r, t=t: f"{r[f'decode_tok_s_{t}t']:.3g}"
                for t in session["threads"]
            },
            **{
                f"prefill tok/s, {t} thread{'s' * (t > 1)} ": lambda r, t=t: f"{r[f'prefill_tok_s_{t}t']:.3g}"
                for t in session["threads"]
            },
            "peak resident ": lambda r: f"{r['peak_rss_gb']:.2f} GB",
            "relative RMS ": lambda r: f"{r['drift']['relative_rms']:.3f}",
            "mean KL ": lambda r: f"{r['drift']['mean_kl']:.2g}",
            "top-1 agreement ": lambda r: (
                f"{round(r['drift']['top1_agreement'] * DRIFT_TOKENS)}/{DRIFT_TOKENS}"
            ),
        }
        rows = [row for row in session["rows"] if "error" not in row]
        parts.append(table(rows, columns))
        parts += [f"Failed: {row['row']}: {row['error']}" for row in session["rows"] if "error" in row]
    return "\n\n".join(parts)


def main(argv=None):
    public, children = ["build", "prepare", "run", "report"], ["ours", "gguf"]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=public + children, metavar="{" + ",".join(public) + "}")
    parser.add_argument("arguments", nargs="*", help="report: results files")
    parser.add_argument("--preset", default="phi2")
    parser.add_argument("--text-layers", type=int, help="decoder layers, if not the preset's")
    parser.add_argument(
        "--root", type=Path, default=Path("/tmp/tinygptv_bench"), help="where checkpoints live"
    )
    phi = [name for name in modes.MODES if modes.mode(name).model == "phi" and name in modes.available()]
    parser.add_argument(
        "--modes", nargs="+", choices=phi, default=["phi-cpu-int8"], help="ours, beside phi-fp32"
    )
    parser.add_argument(
        "--formats", nargs="+", default=["Q8_0", "Q4_K_M", "Q4_0"], help="llama-quantize types"
    )
    parser.add_argument("--new-tokens", type=int, default=16, help="our decode steps per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(json.dumps(build()))
    elif args.command == "prepare":
        prepare(args)
    elif args.command == "run":
        print(report([run(args)]))
    elif args.command == "report":
        print(report([json.loads(Path(path).read_text()) for path in args.arguments]))
    elif args.command == "ours":
        print(json.dumps(our_mode(args.arguments[0], args, logits_file(args, args.arguments[0]))))
    else:
        kind = args.arguments[0]
        out = logits_file(args, kind)
        print(json.dumps(gguf_logits(gguf_path(args.root, Sizes(args.preset, args.text_layers), kind), out)))


if __name__ == "__main__":
    main()
