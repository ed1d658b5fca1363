"""Tiny random GPTs for the tests of the decoding algorithms (imported by several test modules)."""

import torch

from arlib.text.gpt import GPT, GPTConfig


def tiny_gpt(seed: int, n_layer: int = 2, vocab_size: int = 13, block_size: int = 64, std: float = 0.5) -> GPT:
    """A tiny GPT (width 16, 2 heads) with large random weights, so that its distributions are far from uniform."""
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=16))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * std)
    return model.eval()
