"""Process group, device mesh and `parallelize(model, mesh, cfg)`: parallelism outside the model files.

Order (torchtitan's): activation checkpointing -> per-block `torch.compile` -> `fully_shard` per decoder
block, then the root (embeddings, final norm, head). Models follow the Hugging Face causal-LM layout
(blocks in `model.model.layers`). On one process nothing is sharded (replicate-only): bf16 then runs
under autocast with fp32 weights, the same arithmetic as FSDP's `MixedPrecisionPolicy`.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from steelforge.errors import RecipeError
from steelforge.reporting import console
from steelforge.train.config import ParallelConfig, SpeedConfig


@dataclass
class DistEnv:
    """Where this process stands: rank, world size, its device and the data-parallel mesh (None alone)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


# Seconds a rank whose launcher died may spend saving a checkpoint before it exits regardless.
LAUNCHER_DEATH_GRACE_S = 120.0


def stop_with_launcher(poll_s: float = 1.0, grace_s: float = LAUNCHER_DEATH_GRACE_S) -> threading.Thread | None:
    """Under torchrun: when the launcher dies (even by `kill -9`), this rank stops too.

    A rank that outlives its launcher keeps training unseen and can race a relaunch over the same
    checkpoints. A daemon thread polls the parent pid; when the parent is gone it sends this process SIGTERM
    (the training loop's `StopSignal` then saves a checkpoint and returns, as on preemption; every rank gets
    the same signal within a poll) and, if the process is still alive after `grace_s`, exits it hard.
    """
    global _WATCHER
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return None
    if _WATCHER is not None:
        return _WATCHER
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(143)

    _WATCHER = threading.Thread(target=watch, name="steelforge-launcher-watch", daemon=True)
    _WATCHER.start()
    return _WATCHER


_WATCHER: threading.Thread | None = None


def init_distributed(cfg: ParallelConfig | None = None) -> DistEnv:
    """Join the process group torchrun describes in the environment (rendezvous included); alone otherwise.

    The backend is NCCL on GPUs and gloo on CPU, so the distributed path runs in CPU tests.
    """
    cfg = cfg or ParallelConfig()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and cfg.data_parallel == "none":
        raise RecipeError(
            f"'pretrain.parallel.data_parallel' = 'none' under torchrun with {world} processes would train "
            f"{world} unsynchronised copies of the model; set it to auto, fsdp or hsdp, or run one process"
        )
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        stop_with_launcher()
    if world > 1 and not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    mesh = build_mesh(cfg, world, device) if world > 1 else None
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device, mesh=mesh)


def build_mesh(cfg: ParallelConfig, world_size: int, device: torch.device) -> DeviceMesh | None:
    """1-D mesh for FSDP; 2-D (replicate x shard) for HSDP; None for replicate-only."""
    mode = cfg.data_parallel
    if mode == "none" or world_size == 1:
        return None
    if mode == "hsdp":
        replicas = cfg.hsdp_replicas or max(1, world_size // int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        if world_size % replicas:
            raise RecipeError(
                f"'pretrain.parallel.hsdp_replicas' = {replicas} does not divide the world size {world_size}; "
                "pick a divisor (usually the number of nodes)"
            )
        return init_device_mesh(
            device.type, (replicas, world_size // replicas), mesh_dim_names=("dp_replicate", "dp_shard")
        )
    return init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp_shard",))


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM (`model.model.layers`)."""
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise RecipeError(
            f"model class {type(model).__name__} has no 'model.layers' block list; "
            "use an HF causal-LM architecture (Qwen2, Mistral, Llama, Steel)"
        )
    return layers


ATTENTION_KINDS = ("sdpa", "eager", "flash_attention_2")


def check_attention(kind: str, device: torch.device | None = None) -> None:
    """Refuse an attention kernel this machine cannot run, in one sentence naming the setting and the fix."""
    if kind not in ATTENTION_KINDS:
        raise RecipeError(f"attention kernel '{kind}' is not one of {', '.join(ATTENTION_KINDS)}; pick one of them")
    if kind != "flash_attention_2":
        return
    import importlib.util

    on_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if not on_cuda:
        raise RecipeError(
            "'pretrain.speed.attention' = 'flash_attention_2' needs a CUDA GPU; use sdpa on this machine "
            "(it picks the flash kernel itself on GPUs)"
        )
    if importlib.util.find_spec("flash_attn") is None:
        raise RecipeError(
            "'pretrain.speed.attention' = 'flash_attention_2' needs the flash-attn package; "
            "pip install 'steelforge[gpu]' (or flash-attn) or use sdpa"
        )


def set_attention(model: nn.Module, kind: str | None) -> None:
    """Select the attention kernel through the HF config ('sdpa', 'eager' or 'flash_attention_2');
    None keeps the one the model was loaded with."""
    if kind is None:
        return
    check_attention(kind)
    config = getattr(model, "config", None)
    if config is not None:
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(kind)
        else:
            config._attn_implementation = kind


def is_steel(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "steel"


def patch_steel_kernels(
    model: nn.Module,
    *,
    rms_norm: Callable[[int, float], nn.Module],
    silu_mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None,
) -> dict[str, int]:
    """Swap Steel's RMSNorm modules, its (dual-)SwiGLU experts' `silu(a) * b` and RoPE for other kernels.

    Liger only patches the architectures it knows (Qwen2, Mistral...); Steel's blocks are its own classes, so
    they are patched here: each `SteelRMSNorm` becomes `rms_norm(hidden, eps)` sharing the same weight
    Parameter (names and checkpoints unchanged), each expert's forward calls `silu_mul`, and `rotary`
    replaces `apply_rotary_pos_emb` in transformers' Qwen2 module, which SteelAttention (a Qwen2Attention)
    calls: like Liger's own Qwen2 patch that is process-wide. Returns how many modules were patched.
    """
    from steelforge.models.steel.modeling_steel import SteelMLP, SteelRMSNorm, SteelSENet

    counts = {"rms_norm": 0, "swiglu": 0, "rope": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SteelRMSNorm):
                new = rms_norm(child.weight.shape[0], child.variance_epsilon)
                new.weight = child.weight
                setattr(parent, name, new)
                counts["rms_norm"] += 1
    if getattr(model.config, "hidden_act", "silu") in ("silu", "swish"):
        for module in model.modules():
            if isinstance(module, SteelSENet):
                module.forward = types.MethodType(_senet_forward(silu_mul), module)
                counts["swiglu"] += 1
            elif isinstance(module, SteelMLP):
                module.forward = types.MethodType(_mlp_forward(silu_mul), module)
                counts["swiglu"] += 1
    if rotary is not None:
        from transformers.models.qwen2 import modeling_qwen2

        modeling_qwen2.apply_rotary_pos_emb = rotary
        counts["rope"] = 1
    return counts


def _mlp_forward(silu_mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))

    return forward


def _senet_forward(silu_mul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = silu_mul(self.gate_up_proj(x), self.up_proj(x))
        return silu_mul(self.gate_down_proj(h), self.down_proj(h))

    return forward


def _on_cuda(model: nn.Module) -> bool:
    """Where the model's weights live or, for a meta-device model the engine materialises later, will live."""
    param = next(model.parameters(), None)
    if param is None:
        return False
    return param.device.type == "cuda" or (param.device.type == "meta" and torch.cuda.is_available())


def _rope_by_device(fast: Callable[..., Any], plain: Callable[..., Any]) -> Callable[..., Any]:
    """A RoPE that runs `fast` (Triton) on CUDA tensors and `plain` elsewhere.

    RoPE is patched in transformers' modeling module, i.e. for the whole process; without the dispatch a
    CPU model built later in the same process (an evaluation, a test) would hand CPU tensors to Triton.
    """
    if getattr(plain, "_steelforge_rope_dispatch", False):
        plain = plain._plain  # type: ignore[attr-defined]

    def rope(q: torch.Tensor, k: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return (fast if q.is_cuda else plain)(q, k, *args, **kwargs)

    rope._steelforge_rope_dispatch = True  # type: ignore[attr-defined]
    rope._plain = plain  # type: ignore[attr-defined]
    return rope


def apply_liger(model: nn.Module, mode: str) -> bool:
    """Swap RMSNorm/RoPE/SwiGLU for Liger's Triton kernels on a CUDA model; False (PyTorch kept) otherwise.

    Steel models get their own modules patched (`patch_steel_kernels`); other architectures go through
    Liger's per-instance patcher. A model on the CPU keeps PyTorch's kernels even where CUDA exists.
    """
    if mode == "off":
        return False
    from steelforge.train.losses import liger_available

    if not liger_available() or not _on_cuda(model):
        if mode == "on":
            console.print(
                "[yellow]Liger kernels need a model on CUDA and the 'liger-kernel' package; using PyTorch kernels[/]"
            )
        return False
    from transformers.models.qwen2 import modeling_qwen2

    if is_steel(model):
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
        from liger_kernel.transformers import LigerRMSNorm, liger_rotary_pos_emb

        patch_steel_kernels(
            model,
            rms_norm=lambda hidden, eps: LigerRMSNorm(hidden, eps=eps),
            silu_mul=LigerSiLUMulFunction.apply,
            rotary=_rope_by_device(liger_rotary_pos_emb, modeling_qwen2.apply_rotary_pos_emb),
        )
        return True
    import sys

    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    module = sys.modules[type(model).__module__]
    plain_rope = getattr(module, "apply_rotary_pos_emb", None)
    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    patched = getattr(module, "apply_rotary_pos_emb", None)
    if plain_rope is not None and patched is not plain_rope:
        module.apply_rotary_pos_emb = _rope_by_device(patched, plain_rope)
    return True


def configure_precision(precision: str, device: torch.device, *, tf32: bool = True) -> dict[str, bool]:
    """TF32 matmuls on Ampere and newer unless `tf32` is off (fp32 operands rounded to a 10-bit mantissa
    inside the tensor cores: the usual training trade); refuse bf16 on a GPU without bf16 support
    instead of failing deep inside a kernel."""
    if device.type != "cuda":
        return {"tf32": False}
    major, _ = torch.cuda.get_device_capability(device)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise RecipeError(
            f"'pretrain.speed.precision' = 'bf16' but {torch.cuda.get_device_name(device)} has no bf16 support; "
            "set precision to fp32 or use an Ampere-or-newer GPU"
        )
    tf32 = tf32 and major >= 8
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"tf32": tf32}


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 1) -> int:
    """Wrap blocks in non-reentrant activation checkpointing: all (`full`) or every k-th (`every_k`)."""
    if mode == "none":
        return 0
    layers = decoder_blocks(model)
    step = 1 if mode == "full" else every
    wrapped = 0
    for i, block in enumerate(layers):
        if i % step == 0:
            layers[i] = checkpoint_wrapper(block, preserve_rng_state=True)
            wrapped += 1
    return wrapped


def apply_compile(model: nn.Module, backend: str = "inductor") -> None:
    """Compile each block separately: short compile times, and FSDP hooks stay outside the graphs."""
    layers = decoder_blocks(model)
    for i, block in enumerate(layers):
        layers[i] = torch.compile(block, backend=backend, dynamic=False)


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, *, precision: str, reshard_after_forward: bool = True) -> None:
    """`fully_shard` every block, then the root; bf16 compute with fp32 reduction and fp32 master weights."""
    mp = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if precision == "bf16" else None,
        reduce_dtype=torch.float32,
    )
    layers = decoder_blocks(model)
    last = len(layers) - 1
    for i, block in enumerate(layers):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and i < last)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def _forward_hidden(self: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state


def install_forward_hidden(model: nn.Module) -> None:
    """Give the root a `forward_hidden(input_ids, position_ids)` that FSDP treats as a forward.

    Losses that fuse the head with the cross-entropy need the final hidden states and `lm_head.weight`
    rather than logits; calling `model.model` directly would skip the root's FSDP hooks.
    """
    model.forward_hidden = types.MethodType(_forward_hidden, model)
    register_fsdp_forward_method(model, "forward_hidden")


def parallelize(model: nn.Module, mesh: DeviceMesh | None, speed: SpeedConfig, parallel: ParallelConfig) -> nn.Module:
    """Apply the speed switches and data parallelism in torchtitan's order; returns the same model."""
    if speed.attention is not None:  # None: keep what the model was loaded with (model.attn_implementation)
        set_attention(model, speed.attention)
    apply_liger(model, speed.liger)
    apply_activation_checkpointing(model, speed.activation_checkpointing, speed.ac_every)
    if speed.compile:
        apply_compile(model, speed.compile_backend)
    if mesh is not None:
        apply_fsdp(model, mesh, precision=speed.precision, reshard_after_forward=parallel.reshard_after_forward)
    install_forward_hidden(model)
    return model


def uses_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def autocast_context(model: nn.Module, precision: str, device: torch.device):
    """bf16 autocast for the replicate-only path; FSDP's MixedPrecisionPolicy already casts otherwise."""
    import contextlib

    if precision == "bf16" and not uses_fsdp(model):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def materialize(model: nn.Module, device: torch.device, seed: int) -> None:
    """Allocate a meta-device model (already sharded when FSDP was applied) and initialise it.

    Each rank allocates only its shards; HF's `initialize_weights` then fills parameters (DTensor
    shards included) and recomputes the rotary buffers that `to_empty` left uninitialised.
    """
    model.to_empty(device=device)
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if hasattr(tensor, "_is_hf_initialized"):
                del tensor._is_hf_initialized
    torch.manual_seed(seed)
    with torch.no_grad():
        model.initialize_weights()
