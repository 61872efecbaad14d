"""`steelforge info`: versions, devices and usable extras, for bug reports and set-up checks."""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib import metadata

# name -> (distribution names whose presence makes it usable, what it enables). Names that are extras of
# the steelforge package get `pip install -e '.[name]'`; the others are plain packages.
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "ray": (("ray",), "cleaning/dedup on a Ray cluster (executor: ray)"),
    "gpu": (("liger-kernel", "flash-attn"), "Liger fused kernels and FlashAttention on CUDA"),
    "eval": (("lm-eval", "math-verify"), "evaluation harness bridge and answer verification"),
    "quality": (("fasttext-community", "fasttext"), "fastText quality and language-id filters"),
    "tensorboard": (("tensorboard",), "TensorBoard metric logs"),
}
# steelforge is installed from its clone (it is not on the package index).
FROM_CLONE = "from the steelforge clone"


def declared_extras() -> set[str]:
    """The extras the installed steelforge declares (its metadata; empty when run from a bare source tree)."""
    try:
        return set(metadata.metadata("steelforge").get_all("Provides-Extra") or [])
    except metadata.PackageNotFoundError:
        return set()


def install_hint(name: str, dists: tuple[str, ...], extras: set[str]) -> str:
    """How to get `name`: the package extra when it exists, else the package itself."""
    if name in extras:
        return f"pip install -e '.[{name}]' {FROM_CLONE}"
    return f"pip install {dists[0]}"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_info() -> dict[str, list[tuple[str, str]]]:
    import torch

    import steelforge

    versions = [("steelforge", steelforge.__version__), ("python", platform.python_version())]
    for dist in ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pydantic"):
        versions.append((dist, _version(dist) or "missing"))

    devices: list[tuple[str, str]] = [
        ("platform", f"{platform.system()} {platform.machine()}"),
        ("cpu threads (torch)", str(torch.get_num_threads())),
        ("cpu cores (os)", str(os.cpu_count())),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB"))
        devices.append(("bf16 supported", str(torch.cuda.is_bf16_supported())))
    else:
        devices.append(("cuda", "not available (CPU only)"))
    devices.append(("distributed backends", ", ".join(b for b in ("gloo", "nccl") if _backend_ok(b))))

    extras: list[tuple[str, str]] = []
    declared = declared_extras()
    for extra, (dists, purpose) in EXTRAS.items():
        found = [f"{d} {_version(d)}" for d in dists if _version(d)]
        status = ("yes: " + ", ".join(found)) if found else f"no ({install_hint(extra, dists, declared)})"
        extras.append((f"[{extra}] {purpose}" if extra in declared else f"{extra}: {purpose}", status))
    if importlib.util.find_spec("rjieba") is None:
        extras.append(("rjieba", "missing: language-aware Chinese word counts unavailable (pip install rjieba)"))
    extras.append(("install steelforge", f"pip install -e . {FROM_CLONE} (add extras as '.[gpu,eval]')"))
    return {"versions": versions, "devices": devices, "extras": extras}


def _backend_ok(name: str) -> bool:
    import torch.distributed as dist

    return dist.is_available() and getattr(dist, f"is_{name}_available", lambda: False)()
