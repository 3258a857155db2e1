"""The trainer subclasses behind ``training.sft`` and ``training.grpo``."""
