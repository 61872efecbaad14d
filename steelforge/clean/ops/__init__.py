"""Cleaning operators under their Data-Juicer names; every module of this package registers its ops."""

from __future__ import annotations

import importlib
import pkgutil

from steelforge.clean.ops.base import Deduplicator, Filter, Mapper, Op, build_op, register_op, registered_ops

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Deduplicator", "Filter", "Mapper", "Op", "build_op", "register_op", "registered_ops"]
