"""Load on `tinygptv serve --api`: requests/s and latency (p50, p95) at several numbers of concurrent users.

Each user is a closed loop of the official `openai` client asking an image question (greedy, a fixed number of
answer tokens), so every request costs the same; the server runs as `tinygptv serve --api` does for a user, in its
own process, with the int8 weights (`cpu_int8`) unless `--full-weights`. A random full-size checkpoint is written
once under `--root` (the `phi2` preset; `--text-layers` keeps fewer Phi-2 layers at their real width where memory
or time is short). `--max-batch 1` gives the same server without batching, the baseline the batching is judged by.

    python benchmarks/serve_load.py [--preset phi2] [--text-layers N] [--users 1 4 8] [--max-batch 8]

Prints one JSON object: the machine (CPU flags, load average before and after), the server's peak memory, and per
number of users the requests/s, latency p50/p95, and the mean batch size the scheduler formed.
"""

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from importlib import resources
from pathlib import Path

import torch
from _common import machine, write_checkpoint

QUESTION = "What is in the picture?"


def checkpoint(root: Path, preset: str, text_layers: int | None) -> Path:
    folder = root / (f"{preset}-{text_layers}layers" if text_layers else preset)
    if not (folder / "config.json").exists():
        overrides = {"text_config": {"num_hidden_layers": text_layers}} if text_layers else {}
        write_checkpoint(folder, preset, torch.bfloat16, **overrides)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def start_server(folder: Path, port: int, max_batch: int, weights: str) -> subprocess.Popen:
    command = [str(Path(sys.executable).with_name("tinygptv")), "serve", str(folder), "--api", weights]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--max-batch", str(max_batch), "--served-model-name", "bench"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            get_json(f"http://127.0.0.1:{port}/health")
            return process
        except OSError:
            time.sleep(2)
    process.kill()
    raise SystemExit("the server did not start within 30 minutes")


def peak_rss_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def load(client, users: int, requests_per_user: int, max_tokens: int, image: str) -> dict:
    """`users` threads, each asking `requests_per_user` questions one after the other."""
    latencies, tokens, lock = [], [], threading.Lock()

    def user():
        for _ in range(requests_per_user):
            started = time.perf_counter()
            reply = client.chat.completions.create(
                model="bench",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": image}},
                            {"type": "text", "text": QUESTION},
                        ],
                    }
                ],
                temperature=0,
                max_tokens=max_tokens,
                stop=[],
            )
            with lock:
                latencies.append(time.perf_counter() - started)
                tokens.append(reply.usage.completion_tokens)

    threads = [threading.Thread(target=user) for _ in range(users)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "users": users,
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 4),
        "answer_tokens_per_s": round(sum(tokens) / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(percentile(latencies, 0.95), 2),
        "answer_tokens": sorted(set(tokens)),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="phi2")
    parser.add_argument("--text-layers", type=int, help="Phi-2 layers to keep (default: all of the preset's)")
    parser.add_argument("--root", type=Path, default=Path.home() / ".cache" / "tinygptv-hf" / "serve-load")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests-per-user", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument(
        "--warmup", type=int, default=1, help="requests answered before measuring (default: 1)"
    )
    parser.add_argument("--full-weights", action="store_true", help="unquantized float32 instead of int8")
    args = parser.parse_args()

    import openai

    folder = checkpoint(args.root, args.preset, args.text_layers)
    port = free_port()
    flags = set(Path("/proc/cpuinfo").read_text().split())
    before = {
        **machine(),
        "cpu_flags": sorted(
            f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni") or "amx" in f
        ),
        "uptime": os.popen("uptime").read().strip(),
    }
    server = start_server(folder, port, args.max_batch, "--full-weights" if args.full_weights else "--int8")
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=3600, max_retries=0
    )
    image = (
        "data:image/png;base64,"
        + base64.b64encode(
            (resources.files("tinygptv_hf") / "resources" / "example_shapes.png").read_bytes()
        ).decode()
    )
    try:
        if args.warmup:  # first-call allocations, oneDNN primitives
            load(client, 1, args.warmup, args.max_tokens, image)
        results = []
        for users in args.users:
            health = get_json(f"http://127.0.0.1:{port}/health")
            result = load(client, users, args.requests_per_user, args.max_tokens, image)
            after = get_json(f"http://127.0.0.1:{port}/health")
            result["mean_batch"] = round(result["requests"] / max(1, after["batches"] - health["batches"]), 2)
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
        peak = peak_rss_gb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(
        json.dumps(
            {
                "checkpoint": f"{args.preset}"
                + (f", {args.text_layers} Phi-2 layers" if args.text_layers else ""),
                "weights": "float32" if args.full_weights else "int8 (cpu_int8)",
                "max_batch": args.max_batch,
                "max_tokens": args.max_tokens,
                "server_peak_rss_gb": round(peak, 2),
                "machine_before": before,
                "load_average_after": os.getloadavg(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
