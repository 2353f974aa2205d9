"""thrlab: Token Hidden Reward (arXiv 2510.03669) in 4-bit LoRA GRPO, Jupyter-first.

Import the pieces you need; nothing heavy is imported here so `thrlab.train.runs` and plotting work
without torch.
"""
__version__ = "0.1.0"
