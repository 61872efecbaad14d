"""Post-training building blocks (SFT, DPO, GRPO): per-token log-probs, preference and policy losses, rewards.

Pure functions of tensors and models, so that every trainer shares them and each one is checked against
TRL's reference values.
"""
