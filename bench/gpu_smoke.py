"""The Python sections of `bench/gpu_smoke.sh`: steelforge's CUDA paths on one GPU.

Sections (run in the order given; each prints one summary line per check):
- `kernels`: Liger on a real Steel model (its RMSNorm/RoPE/SwiGLU patched), fused AdamW, bf16 autocast, and
  flash-attention 2 against SDPA when flash-attn is installed;
- `fsdp-step` (under `torchrun`): FSDP2 training steps of steel-1b at seq 2048 in bf16 with activation
  checkpointing, with the Liger fused cross-entropy and with the chunked one: s/step, tokens/s, MFU, memory;
- `memory`: moxin-7b forward + backward at seq 4096 in bf16 with activation checkpointing: peak memory;
- `profile` (under `torchrun`, not part of the smoke script): steel-1b's step with one switch changed at a
  time, a dense Qwen2 of the same shape, and the top CUDA kernels of one step;
- `resume`: `steelforge pretrain` on the device, SIGKILLed after a checkpoint and resumed, against two
  uninterrupted runs: the resumed weights must differ from the reference no more than two clean runs do.

`--tiny` swaps in tiny models and short sequences so that every section also runs on a CPU: the test suite
runs it that way so the script cannot rot between GPU runs. Exit code 1 when a check fails.

    python bench/gpu_smoke.py kernels memory resume
    python -m torch.distributed.run --standalone --nproc_per_node 1 bench/gpu_smoke.py fsdp-step
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL_STEEL = {"vocab_size": 1024, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 4, "intermediate_size": 512}


def _device(tiny: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if not tiny:
        raise SystemExit("gpu_smoke: no CUDA device visible to torch; use --tiny for a CPU dry run")
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a on CPU"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def kernels(tiny: bool) -> None:
    """Kernels the unit tests cannot reach on CPU: Liger on a real Steel model, fused AdamW, flash vs SDPA."""
    from steelforge.models.loading import load_model
    from steelforge.train.config import OptimConfig
    from steelforge.train.distributed import apply_liger, set_attention
    from steelforge.train.losses import liger_available
    from steelforge.train.optim import build_optimizer

    dev = _device(tiny)
    ids = torch.randint(0, SMALL_STEEL["vocab_size"], (2, 64 if tiny else 256), device=dev)
    torch.manual_seed(0)
    plain = load_model({"preset": "tiny-steel", "overrides": SMALL_STEEL}, dtype=torch.float32, device=dev)
    torch.manual_seed(0)
    fast = load_model({"preset": "tiny-steel", "overrides": SMALL_STEEL}, dtype=torch.float32, device=dev)
    if liger_available():
        assert apply_liger(fast, "on"), "apply_liger returned False with Liger available"
        a, b = plain(input_ids=ids).logits, fast(input_ids=ids).logits
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-3)
        b.float().pow(2).mean().backward()
        grads = [p.grad for p in fast.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), "Liger backward left bad gradients"
        print(f"liger on steel: logits match plain PyTorch (max diff {(a - b).abs().max().item():.2e}), backward ok")
    else:
        print("SKIP liger on steel: needs CUDA and liger-kernel (pip install 'steelforge[gpu]')")
    opt = build_optimizer(plain, OptimConfig(lr=1e-3))
    if dev.type == "cuda":
        assert opt.defaults.get("fused"), "AdamW is not fused on CUDA"
    plain(input_ids=ids).logits.float().mean().backward()
    opt.step()
    print(f"AdamW step ok (fused={bool(opt.defaults.get('fused'))})")
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        out = plain(input_ids=ids).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    print("bf16 autocast ok")
    if dev.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        model = load_model({"preset": "tiny-moxin", "overrides": {"vocab_size": 1024}},
                           dtype=torch.bfloat16, device=dev)
        ref = model(input_ids=ids).logits
        set_attention(model, "flash_attention_2")
        torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=3e-2, atol=3e-2)
        print("flash_attention_2 matches sdpa")
    else:
        print("SKIP flash_attention_2: needs CUDA and flash-attn")


def fsdp_step(tiny: bool) -> None:
    """FSDP2 steps of steel-1b (one GPU: the sharding code path, world size 1) with two loss kernels."""
    from torch.distributed.device_mesh import init_device_mesh

    from steelforge.models.flops import flops_per_token
    from steelforge.models.loading import load_model
    from steelforge.train.config import OptimConfig, ParallelConfig, SpeedConfig
    from steelforge.train.distributed import configure_precision, init_distributed, parallelize
    from steelforge.train.losses import liger_available
    from steelforge.train.metrics import resolve_peak_flops
    from steelforge.train.optim import build_optimizer
    from steelforge.train.pretrain import causal_lm_loss
    from steelforge.train.train_module import LossFnTrainModule

    parallel = ParallelConfig(data_parallel="fsdp")
    env = init_distributed(parallel)
    if env.device.type == "cpu" and not tiny:
        raise SystemExit("gpu_smoke: no CUDA device visible to torch; use --tiny for a CPU dry run")
    configure_precision("bf16", env.device)
    source = {"preset": "tiny-steel", "overrides": SMALL_STEEL} if tiny else {"preset": "steel-1b"}
    seq, micro, steps = (128, 2, 3) if tiny else (2048, 4, 5)
    torch.manual_seed(0)
    model = load_model(source, dtype=torch.float32, device=env.device)
    # build_mesh gives None for one process (replicate-only); the smoke test wants the FSDP2 path itself.
    mesh = init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("dp_shard",))
    parallelize(model, mesh, SpeedConfig(precision="bf16", activation_checkpointing="full"), parallel)
    opt = build_optimizer(model, OptimConfig(lr=3e-4))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    vocab = model.config.vocab_size
    batch = {"input_ids": torch.randint(0, vocab, (micro, seq), device=env.device)}
    batch["labels"] = torch.roll(batch["input_ids"], -1, 1)
    peak, peak_source = resolve_peak_flops(env.device, torch.bfloat16)
    per_token = flops_per_token(model.config, seq, training=True)
    losses = [("liger fused CE", True)] if liger_available() else []
    losses.append(("chunked CE", False))
    for label, use_liger in losses:
        module = LossFnTrainModule(model, causal_lm_loss(use_liger=use_liger), opt, sched, precision="bf16",
                                   device=env.device)
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(env.device)
        times, out = [], {}
        for _ in range(steps):
            _sync(env.device)
            t0 = time.perf_counter()
            module.train_batch(batch)
            out = module.optim_step()
            _sync(env.device)
            times.append(time.perf_counter() - t0)
        assert out["finite"] == 1.0, f"non-finite step with {label}"
        dt = min(times[1:])
        tps = micro * seq * env.world_size / dt
        print(f"{source['preset']} fsdp2 bf16 seq {seq} micro {micro} ({label}): loss {out['loss']:.3f}, "
              f"{dt:.3f} s/step, {tps:,.0f} tokens/s, MFU {tps * per_token / (peak * env.world_size):.1%} "
              f"(peak {peak / 1e12:.0f} TFLOP/s, {peak_source}), peak memory {_peak_gib(env.device)}")
    torch.distributed.destroy_process_group()


def profile(tiny: bool) -> None:
    """Where steel-1b's step time goes (under `torchrun`): the step with one switch changed at a time, a dense
    Qwen2 of the same shape (no Soft-MoE) for comparison, and the top CUDA kernels of one step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from transformers import Qwen2Config

    from steelforge.models.flops import flops_per_token
    from steelforge.models.loading import load_model
    from steelforge.train.config import OptimConfig, ParallelConfig, SpeedConfig
    from steelforge.train.distributed import configure_precision, init_distributed, parallelize
    from steelforge.train.metrics import resolve_peak_flops
    from steelforge.train.optim import build_optimizer
    from steelforge.train.pretrain import causal_lm_loss
    from steelforge.train.train_module import LossFnTrainModule

    parallel = ParallelConfig(data_parallel="fsdp")
    env = init_distributed(parallel)
    configure_precision("bf16", env.device)
    mesh = init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("dp_shard",))
    steel = {"preset": "tiny-steel", "overrides": SMALL_STEEL} if tiny else {"preset": "steel-1b"}
    seq, micro, steps = (128, 2, 3) if tiny else (2048, 4, 4)
    peak, _ = resolve_peak_flops(env.device, torch.bfloat16)
    cases = [
        ("steel, AC full, liger on, liger CE", steel, "full", "on", True),
        ("steel, AC none, liger on, chunked CE", steel, "none", "on", False),
        ("steel, AC none, liger off, chunked CE", steel, "none", "off", False),
    ]
    model = load_model(steel, on_meta=True)
    c = model.config
    dense = Qwen2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                        intermediate_size=4 * c.hidden_size, tie_word_embeddings=False)
    cases.append(("dense qwen2 same shape (ffn 4h), AC none, liger on, chunked CE", dense, "none", "on", False))
    for label, source, ac, liger, liger_ce in cases:
        torch.manual_seed(0)
        model = load_model(source, dtype=torch.float32, device=env.device)
        parallelize(model, mesh, SpeedConfig(precision="bf16", activation_checkpointing=ac, liger=liger), parallel)
        opt = build_optimizer(model, OptimConfig(lr=3e-4))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        module = LossFnTrainModule(model, causal_lm_loss(use_liger=liger_ce and liger == "on"), opt, sched,
                                   precision="bf16", device=env.device)
        ids = torch.randint(0, model.config.vocab_size, (micro, seq), device=env.device)
        batch = {"input_ids": ids, "labels": torch.roll(ids, -1, 1)}
        times = []
        for _ in range(steps):
            _sync(env.device)
            t0 = time.perf_counter()
            module.train_batch(batch)
            module.optim_step()
            _sync(env.device)
            times.append(time.perf_counter() - t0)
        dt = min(times[1:])
        tps = micro * seq / dt
        params = sum(p.numel() for p in model.parameters())
        print(f"{label}: {params / 1e9:.2f}B params, {dt:.3f} s/step, {tps:,.0f} tokens/s, "
              f"MFU {tps * flops_per_token(model.config, seq) / peak:.1%}", flush=True)
        if label.startswith("steel, AC none, liger on"):
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
            with torch_profile(activities=activities) as prof:
                module.train_batch(batch)
                module.optim_step()
                _sync(env.device)
            key = "self_cuda_time_total" if env.device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60), flush=True)
        del model, module, opt
        if env.device.type == "cuda":
            torch.cuda.empty_cache()
    torch.distributed.destroy_process_group()


def memory(tiny: bool) -> None:
    """moxin-7b forward + backward with activation checkpointing: does a 7B step fit, and in how much."""
    from steelforge.models.loading import load_model
    from steelforge.train.distributed import apply_activation_checkpointing, install_forward_hidden
    from steelforge.train.pretrain import causal_lm_loss

    dev = _device(tiny)
    source = {"preset": "tiny-moxin", "overrides": {"vocab_size": 1024}} if tiny else {"preset": "moxin-7b"}
    seq = 256 if tiny else 4096
    model = load_model(source, dtype=torch.bfloat16, device=dev)
    model.train()
    n = apply_activation_checkpointing(model, "full")
    install_forward_hidden(model)
    ids = torch.randint(0, model.config.vocab_size, (1, seq), device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0 = time.perf_counter()
    out = causal_lm_loss()(model, {"input_ids": ids, "labels": torch.roll(ids, -1, 1)})
    (out.loss_sum / out.num_tokens).backward()
    _sync(dev)
    params = sum(p.numel() for p in model.parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), "a parameter got no gradient"
    print(f"{source['preset']} ({params / 1e9:.2f}B params, {n} blocks checkpointed) fwd+bwd seq {seq} bf16: "
          f"{time.perf_counter() - t0:.2f} s, peak memory {_peak_gib(dev)} "
          f"(weights + grads alone {2 * 2 * params / 2**30:.1f} GiB)")


def _resume_world(root: Path, tiny: bool) -> dict[str, Path]:
    """A word-level tokenizer, a random token store and four recipes (two references, a killed run)."""
    import numpy as np
    import yaml
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from steelforge.tokenizers import load_tokenizer, tokenizer_fingerprint
    from steelforge.tokens.store import Manifest, write_shard

    vocab = 64
    words = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab)}}
    raw = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok_dir = root / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(tok_dir)
    store = root / "store"
    store.mkdir()
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, vocab, size=int(rng.integers(20, 200))) for _ in range(400)]
    tokens = np.concatenate([np.append(d, 0) for d in docs])
    starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]])
    shard = write_shard(store, "tiny-00000", tokens, starts, source="tiny")
    fp = tokenizer_fingerprint(load_tokenizer(str(tok_dir)))
    Manifest("tiny", fp, "<|endoftext|>", 0, len(tokens), shards=[shard]).save(store)
    paths = {}
    for name in ("reference", "again", "killed"):
        recipe = {
            "name": name, "out_dir": str(root / name), "seed": 7, "tokenizer": str(tok_dir),
            "model": {"preset": "tiny-steel", "overrides": {**SMALL_STEEL, "vocab_size": vocab}},
            "pretrain": {
                "max_steps": 8 if tiny else 12, "seq_len": 64 if tiny else 256, "micro_batch_size": 4,
                "stores": [str(store)], "log_every": 1, "tensorboard": False,
                "optim": {"lr": 3e-3}, "schedule": {"warmup_steps": 2},
                "speed": {"precision": "fp32" if tiny else "bf16", "liger": "auto"},
                "checkpoint": {"every": 3, "keep_last": 2, "export_final": True},
            },
        }
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(recipe))
    return paths


def _pretrain(recipe: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               STEELFORGE_QUIET="1")
    code = "import sys; from steelforge.cli import main; sys.argv[0] = 'steelforge'; main()"
    return subprocess.Popen([sys.executable, "-c", code, "pretrain", str(recipe)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_smoke: {what} failed (exit {proc.returncode}):\n{err[-3000:]}")


def _weights(recipe: Path) -> dict[str, torch.Tensor]:
    import yaml
    from safetensors.torch import load_file

    out = Path(yaml.safe_load(recipe.read_text())["out_dir"]) / "pretrain" / "hf" / "model.safetensors"
    return load_file(out)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def resume(tiny: bool) -> None:
    """Kill `steelforge pretrain` on the device after a checkpoint, resume it, and compare with clean runs."""
    import yaml

    _device(tiny)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _resume_world(Path(tmp), tiny)
        steps = yaml.safe_load(paths["killed"].read_text())["pretrain"]["max_steps"]
        proc = _pretrain(paths["killed"])
        metrics = Path(tmp) / "killed" / "pretrain" / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while True:
            seen = [json.loads(x)["step"] for x in metrics.read_text().splitlines()] if metrics.is_file() else []
            if seen and max(seen) >= 4:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                _finish(proc, "the run to be killed")
                raise SystemExit("gpu_smoke: the run to be killed finished before step 4")
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("gpu_smoke: pretrain reached no step 4 within 300 s")
            time.sleep(0.01)
        proc.communicate(timeout=60)
        t0 = time.perf_counter()
        _finish(_pretrain(paths["killed"]), "the resumed run")
        resumed_s = time.perf_counter() - t0
        for name in ("reference", "again"):
            _finish(_pretrain(paths[name]), f"the {name} run")
        ref = _weights(paths["reference"])
        noise = _max_diff(ref, _weights(paths["again"]))
        resumed = _max_diff(ref, _weights(paths["killed"]))
        ckpts = sorted(p.name for p in (Path(tmp) / "killed" / "pretrain" / "checkpoints").iterdir())
    print(f"pretrain killed after step {max(seen)} and resumed to step {steps} ({resumed_s:.1f} s incl. start-up); "
          f"checkpoints {ckpts}; max |weight diff| resumed vs reference {resumed:.2e}, "
          f"reference vs a second clean run {noise:.2e}")
    bound = max(10 * noise, 1e-6) if noise > 0 else 0.0
    assert resumed <= bound, f"resumed weights differ by {resumed:.2e}, more than clean runs do ({noise:.2e})"


SECTIONS = {"kernels": kernels, "fsdp-step": fsdp_step, "memory": memory, "resume": resume, "profile": profile}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="+", choices=list(SECTIONS), help="sections to run, in order")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sequences; runs on a CPU too")
    args = parser.parse_args(argv)
    failed = []
    for name in args.sections:
        print(f"-- {name}", flush=True)
        t0 = time.perf_counter()
        try:
            SECTIONS[name](args.tiny)
        except (Exception, SystemExit) as exc:  # report every section, then fail
            failed.append(name)
            traceback.print_exc()
            print(f"FAILED {name}: {type(exc).__name__}: {exc}", flush=True)
        print(f"-- {name}: {'FAILED' if name in failed else 'ok'} in {time.perf_counter() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
