"""The Steel-LLM architecture, registered with transformers' Auto classes on import.

Registration means `AutoConfig`/`AutoModelForCausalLM` load `model_type: steel` folders without
`trust_remote_code`; `register_for_auto_class` makes `save_pretrained` copy the two standalone files and
write `auto_map`, so an exported folder also loads where steelforge is not installed.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from steelforge.models.steel.configuration_steel import DISPATCH_MODES, SteelConfig
from steelforge.models.steel.modeling_steel import SteelCache, SteelForCausalLM, SteelModel

AutoConfig.register(SteelConfig.model_type, SteelConfig, exist_ok=True)
AutoModelForCausalLM.register(SteelConfig, SteelForCausalLM, exist_ok=True)
SteelConfig.register_for_auto_class()
SteelForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["DISPATCH_MODES", "SteelCache", "SteelConfig", "SteelForCausalLM", "SteelModel"]
