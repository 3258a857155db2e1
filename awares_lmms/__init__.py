"""awares-lmms: the AwaRes two-turn crop protocol for Qwen2.5-VL in lmms-eval, and its training recipe."""

__version__ = "0.1.0"
