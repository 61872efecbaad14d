"""Serving throughput with dynamic batching against sequential `model.generate`, in one run.

    python bench/serve.py                       # tiny-moxin preset (random init), 64 new tokens per request
    python bench/serve.py --model runs/demo/release --clients 1 4 16 --requests 32 --threads 1

Exports a small model (or takes `--model`), starts `steelforge serve` in a subprocess on 127.0.0.1, and
sends streamed `/v1/completions` requests from 1, 4 and 16 concurrent clients (greedy, the same prompts).
Reports completion tokens/s over the wall time of each level and the mean time to the first streamed token.
The baseline is transformers' `model.generate` on the same prompts one after another in this process (same
thread count), its first-token latency taken with a streamer. Baseline and serve levels alternate for `--rounds`
rounds, and ratios are taken within a round, because the shared box's speed drifts. Goals (issue 17): >= 4x generate's tokens/s
at 16 clients, first-token latency at 1 client within 1.2x of generate's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "The history of the city of", "def quicksort(items):", "Question: what is 12 times 7? Answer:",
    "In 1905 Albert Einstein published", "A recipe for bread needs flour,", "The three laws of motion are",
    "import numpy as np\n", "Once upon a time in a small village",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_model(tmp: Path) -> Path:
    import torch

    from steelforge.export.hf import export_checkpoint
    from steelforge.models.loading import load_model
    from steelforge.tokenizers import load_tokenizer

    torch.manual_seed(0)
    load_model("tiny-moxin", dtype=torch.float32).save_pretrained(tmp / "src")
    load_tokenizer("mistral-v1").save_pretrained(tmp / "src")
    return export_checkpoint(tmp / "src", tmp / "model").out_dir


class Baseline:
    """Sequential HF generate in this process: tokens/s and time to first new token (a streamer's 2nd put)."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        import torch

        from steelforge.infer.generation import load_for_inference

        torch.set_num_threads(threads)
        self.loaded = load_for_inference(model_dir)
        self.run([PROMPTS[0]], 4)  # warm-up

    def run(self, prompts: list[str], max_tokens: int) -> dict[str, float]:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class FirstToken(BaseStreamer):
            def __init__(self) -> None:
                self.calls, self.first = 0, None

            def put(self, value: object) -> None:
                self.calls += 1
                if self.calls == 2 and self.first is None:
                    self.first = time.perf_counter()

            def end(self) -> None:
                pass

        loaded = self.loaded
        tokens, ttfts = 0, []
        start = time.perf_counter()
        for prompt in prompts:
            ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
            streamer = FirstToken()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                            do_sample=False, eos_token_id=loaded.stop_token_ids,
                                            pad_token_id=loaded.pad_token_id, streamer=streamer)
            ttfts.append((streamer.first or time.perf_counter()) - t0)
            tokens += sum(1 for t in out[0, ids.shape[1]:].tolist() if t not in loaded.stop_token_ids)
        wall = time.perf_counter() - start
        return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "ttft_s": statistics.mean(ttfts)}


def _stream_one(client: object, url: str, model: str, prompt: str, max_tokens: int) -> tuple[int, float, int]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first = None
    with client.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as res:
        if res.status_code != 200:
            return res.status_code, 0.0, 0
        for line in res.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise SystemExit(f"server error: {chunk}")
            if first is None and chunk["choices"][0]["text"]:
                first = time.perf_counter() - t0
    return 200, first or 0.0, 0


def _level(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    import httpx

    before = httpx.get(f"{url}/health").json()
    # one client, connections opened before the clock starts: client set-up is not the server's latency
    client = httpx.Client(limits=httpx.Limits(max_connections=clients + 1))
    for _ in range(clients):
        client.get(f"{url}/health")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: _stream_one(client, url, model, p, max_tokens), prompts))
    wall = time.perf_counter() - start
    client.close()
    after = httpx.get(f"{url}/health").json()
    tokens = after["tokens"] - before["tokens"]
    ok = [r for r in results if r[0] == 200]
    return {
        "clients": clients, "requests": requests, "ok": len(ok), "tokens": tokens, "wall_s": wall,
        "tokens_per_s": tokens / wall, "ttft_s": statistics.mean(r[1] for r in ok),
        "batches": after["batches"] - before["batches"], "largest_batch": after["largest_batch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an exported model folder (default: tiny-moxin exported to a temp dir)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the server and the baseline")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/serve rounds")
    parser.add_argument("--baseline-requests", type=int, default=8, help="sequential generate calls per round")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else _small_model(Path(tmp))
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_NUM_THREADS": str(args.threads)}
        server = subprocess.Popen(
            [sys.executable, "-m", "steelforge.cli", "serve", str(model_dir), "--port", str(port), "--model-name", "bench",
             "--threads", str(args.threads), "--max-batch-size", str(max(args.clients)), "--max-queue", "256",
             "--batch-wait-ms", str(args.batch_wait_ms)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
            _level(url, "bench", 1, 2, 4)  # warm-up
            baseline = Baseline(model_dir, args.threads)
            rounds: list[tuple[dict[str, float], list[dict[str, float]]]] = []
            for _ in range(args.rounds):  # alternate, so that both sides see the same load on a shared box
                base = baseline.run([PROMPTS[i % len(PROMPTS)] for i in range(args.baseline_requests)],
                                    args.max_tokens)
                levels = [_level(url, "bench", c, max(args.requests, c), args.max_tokens) for c in args.clients]
                rounds.append((base, levels))
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"model {model_dir.name if args.model else 'tiny-moxin (random init)'}, {args.max_tokens} new tokens max, "
          f"greedy, {args.threads} torch thread(s), {args.rounds} rounds (ratios: median [min-max] over rounds)")
    print(f"{'setting':<22}{'requests':>9}{'tok/s':>9}{'x generate':>22}{'TTFT ms':>9}{'TTFT / gen':>22}{'batches':>9}")

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"

    base_tps = [b["tokens_per_s"] for b, _ in rounds]
    base_ttft = [b["ttft_s"] for b, _ in rounds]
    print(f"{'generate (sequential)':<22}{args.baseline_requests:>9}{statistics.median(base_tps):>9.1f}{'1.00':>22}"
          f"{statistics.median(base_ttft) * 1e3:>9.1f}{'1.00':>22}{'':>9}")
    ratios: dict[int, tuple[list[float], list[float]]] = {}
    for i, clients in enumerate(args.clients):
        rows = [(b, levels[i]) for b, levels in rounds]
        tps = [lv["tokens_per_s"] / b["tokens_per_s"] for b, lv in rows]
        ttft = [lv["ttft_s"] / b["ttft_s"] for b, lv in rows]
        ratios[clients] = (tps, ttft)
        print(f"{'serve, ' + str(clients) + ' client(s)':<22}{rows[0][1]['ok']:>9}"
              f"{statistics.median(lv['tokens_per_s'] for _, lv in rows):>9.1f}{spread(tps):>22}"
              f"{statistics.median(lv['ttft_s'] for _, lv in rows) * 1e3:>9.1f}{spread(ttft):>22}"
              f"{statistics.median(lv['batches'] for _, lv in rows):>9.0f}")
    if 1 in ratios:
        print(f"first-token latency at 1 client / generate's: {spread(ratios[1][1])} (goal <= 1.2x)")
    top = max(args.clients)
    print(f"tokens/s at {top} clients / generate's: {spread(ratios[top][0])} (goal >= 4x)")

if __name__ == "__main__":
    main()
