"""Checkpointer: round trip of every state, retention, atomicity under SIGKILL, resharding 2 -> 1, HF export.

Run as a script (``python test_checkpoint.py MODE ...``) this file is also the subprocess worker the tests
kill or launch under ``torch.distributed.run``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from steelforge.train.checkpoint import (
    PAUSE_ENV,
    Checkpointer,
    CheckpointError,
    StopSignal,
    is_complete,
)

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]


class TinyLM(nn.Module):
    """Embedding -> residual MLP blocks -> head: small, deterministic, shardable per block."""

    def __init__(self, vocab: int = 64, dim: int = 32, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, 2 * dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(2 * dim, dim),
            )
            for _ in range(layers)
        )
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for block in self.layers:
            h = h + block(h)
        return self.head(h)


class CursorLoader:
    """Stands in for the token loader: a cursor state, batches derived from (seed, sample index)."""

    def __init__(self, seed: int = 0, batch: int = 4, seq: int = 8, vocab: int = 64) -> None:
        self.seed, self.batch, self.seq, self.vocab = seed, batch, seq, vocab
        self.consumed = 0

    def next(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.consumed)
        self.consumed += self.batch
        return torch.randint(0, self.vocab, (self.batch, self.seq), generator=g)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed, self.seed = state["consumed"], state["seed"]


def make_state(seed: int = 0, dropout: float = 0.1) -> dict:
    torch.manual_seed(seed)
    model = TinyLM(dropout=dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
    return {
        "model": model,
        "optimizer": opt,
        "scheduler": sched,
        "loader": CursorLoader(seed),
        "trainer": {"step": 0, "tokens": 0},
    }


def train_steps(state: dict, n: int) -> None:
    model, opt = state["model"], state["optimizer"]
    for _ in range(n):
        ids = state["loader"].next()
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        state["scheduler"].step()
        opt.zero_grad(set_to_none=True)
        state["trainer"]["step"] += 1
        state["trainer"]["tokens"] += ids.numel()


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------- unit tests


def test_round_trip_restores_every_state_and_training_continues_identically(tmp_path: Path) -> None:
    state = make_state()
    train_steps(state, 3)
    ckpt = Checkpointer(tmp_path / "ckpt", recipe_yaml="seed: 0\n", recipe_hash="abc")
    random.seed(7)
    np.random.seed(7)
    path = ckpt.save(3, state)
    expected_rng = (random.random(), float(np.random.rand()), torch.rand(3))
    train_steps(state, 2)
    expected = params(state["model"])

    fresh = make_state(seed=1)  # other weights, empty optimizer: everything must come from disk
    meta = ckpt.load(path, fresh)
    assert meta["step"] == 3 and meta["recipe_hash"] == "abc"
    assert fresh["trainer"] == {"step": 3, "tokens": 3 * 4 * 8}
    assert fresh["loader"].consumed == 12 and fresh["scheduler"].last_epoch == 3
    got_rng = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got_rng[:2] == expected_rng[:2] and torch.equal(got_rng[2], expected_rng[2])
    train_steps(fresh, 2)  # dropout masks come from the restored RNG too
    assert_same(params(fresh["model"]), expected)
    assert (path / "recipe.yaml").read_text() == "seed: 0\n"


def test_retention_keeps_last_n_and_every_kth(tmp_path: Path) -> None:
    state = make_state()
    ckpt = Checkpointer(tmp_path, keep_last=2, keep_every=4)
    for step in range(1, 11):
        ckpt.save(step, state)
    assert [p.name for p in ckpt.complete()] == [f"step_{s:09d}" for s in (4, 8, 9, 10)]
    assert ckpt.latest() == ckpt.step_dir(10)
    assert not list(tmp_path.glob(".tmp-*"))


def test_latest_ignores_incomplete_directories(tmp_path: Path) -> None:
    state = make_state()
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest() is None
    ckpt.save(5, state)
    (tmp_path / ".tmp-step_000000009").mkdir()
    (tmp_path / ".tmp-step_000000009" / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / "step_000000007").mkdir()  # no metadata: not complete
    assert ckpt.latest() == ckpt.step_dir(5)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.load(tmp_path / "step_000000007", state)


def test_recipe_hash_is_checked_only_when_asked(tmp_path: Path) -> None:
    state = make_state()
    path = Checkpointer(tmp_path, recipe_hash="old").save(1, state)
    other = Checkpointer(tmp_path, recipe_hash="new")
    other.load(path, make_state())
    with pytest.raises(CheckpointError, match="recipe 'old'"):
        other.load(path, make_state(), check_recipe=True)


def test_missing_state_is_a_clear_error(tmp_path: Path) -> None:
    state = make_state()
    path = Checkpointer(tmp_path).save(1, state)
    wanted = make_state()
    wanted["sampler2"] = {"x": 1}
    with pytest.raises(CheckpointError, match="no state for sampler2"):
        Checkpointer(tmp_path).load(path, wanted)


def test_stop_signal_turns_sigterm_into_a_flag() -> None:
    with StopSignal() as stop:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.should_stop() and stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is not stop._handler


def _worker_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop(PAUSE_ENV, None)
    return env


def test_sigkill_while_writing_leaves_previous_checkpoint_loadable(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "kill-during-save", str(tmp_path)],
        env=_worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tmp_dir = tmp_path / ".tmp-step_000000002"
    deadline = time.monotonic() + 60
    while not list(tmp_dir.glob("*.distcp")):  # step 2's shards are on disk, its metadata is not
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "worker never reached the second save"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    ckpt = Checkpointer(tmp_path)
    assert tmp_dir.is_dir() and not is_complete(tmp_dir)
    assert ckpt.latest() == ckpt.step_dir(1)
    restored = make_state(seed=5)
    ckpt.load(ckpt.latest(), restored)
    assert_same(params(restored["model"]), torch.load(tmp_path / "step1.pt"))
    ckpt.save(3, restored)  # the next save clears the debris
    assert not tmp_dir.exists()


@pytest.mark.distributed
def test_fsdp2_checkpoint_from_two_ranks_loads_in_one_process(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE),
        "save-fsdp2",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, env=_worker_env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.loads((tmp_path / "ckpt" / "step_000000003" / "checkpoint.json").read_text())
    assert meta["world_size"] == 2
    shards = list((tmp_path / "ckpt" / "step_000000003").glob("*.distcp"))
    assert len(shards) == 2  # each rank wrote its own shard

    ckpt = Checkpointer(tmp_path / "ckpt")
    restored = make_state(seed=9, dropout=0.0)
    ckpt.load(ckpt.latest(), restored)
    reference = torch.load(tmp_path / "full.pt")
    assert_same(params(restored["model"]), reference["model"])
    exp_avg = {k: v["exp_avg"] for k, v in restored["optimizer"].state_dict()["state"].items()}
    names = [n for n, _ in restored["model"].named_parameters()]
    for i, name in enumerate(names):
        assert torch.equal(exp_avg[i], reference["exp_avg"][name]), name
    assert restored["trainer"]["step"] == 3 and restored["scheduler"].last_epoch == 3


def test_export_hf_loads_with_auto_classes(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(cfg)
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", *"abcdefghij "])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"

    out = Checkpointer(tmp_path / "ckpt", recipe_yaml="model: tiny\n").export_hf(model, tok, tmp_path / "hf")
    assert list(out.glob("*.safetensors")) and (out / "recipe.yaml").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    tok2 = AutoTokenizer.from_pretrained(out)
    text = tok2.apply_chat_template([{"role": "user", "content": "abc"}], tokenize=False)
    assert text == "<|im_start|>abc<|im_end|>"


# ---------------------------------------------------------------------------------------------- workers


def _kill_during_save(root: str) -> None:
    state = make_state()
    train_steps(state, 1)
    ckpt = Checkpointer(Path(root))
    ckpt.save(1, state)
    torch.save(params(state["model"]), Path(root) / "step1.pt")
    train_steps(state, 1)
    os.environ[PAUSE_ENV] = "120"  # the parent kills us inside this pause
    ckpt.save(2, state)


def _save_fsdp2(root: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    state = make_state(dropout=0.0)
    for block in state["model"].layers:
        fully_shard(block)
    fully_shard(state["model"])
    state["optimizer"] = torch.optim.AdamW(state["model"].parameters(), lr=1e-2, weight_decay=0.1)
    state["scheduler"] = torch.optim.lr_scheduler.LambdaLR(
        state["optimizer"], lambda s: min(1.0, (s + 1) / 5)
    )
    state["loader"] = CursorLoader(seed=dist.get_rank())
    train_steps(state, 3)
    Checkpointer(Path(root) / "ckpt").save(3, state)
    full_model, full_optim = get_state_dict(
        state["model"], state["optimizer"], options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if dist.get_rank() == 0:
        exp_avg = {name: s["exp_avg"] for name, s in full_optim["state"].items()}
        torch.save({"model": full_model, "exp_avg": exp_avg}, Path(root) / "full.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"kill-during-save": _kill_during_save, "save-fsdp2": _save_fsdp2}[sys.argv[1]](*sys.argv[2:])
