"""Decoding speed of arlib's GPT: with vs without the KV cache, and vs Hugging Face's ``generate``.

    python benchmarks/generate.py            # 64, 128 and 240 new tokens, best of 3
    python benchmarks/generate.py --quick    # the same lengths, one timed run each

Uses the committed ``shakespeare-target`` checkpoint if present, else a randomly initialised model of
the same configuration (it says which). All decoding is greedy, and the three decoders must produce
the same tokens (asserted) before their speeds are compared. Every number comes from this one run:
the ratios (cache / no cache, arlib / Hugging Face) are what to compare across machines.
"""

from __future__ import annotations

import argparse
import time

import torch

import arlib
from arlib.text.gpt import GPT
from arlib.text.recipes import RECIPES
from arlib.text.sampling import generate

PROMPT = "ROMEO:\nBut soft,"  # 16 characters: 16 + 240 new tokens fill the 256-token context


def load_model(device: str) -> tuple[GPT, torch.Tensor, str]:
    """The model, a (1, 16) prompt and a line that says which model it is."""
    try:
        checkpoint = arlib.load("shakespeare-target", device)
        model, tokenizer, meta = checkpoint.model, checkpoint.tokenizer, checkpoint.meta
        prompt = tokenizer.encode(PROMPT)[None]
        label = f"checkpoint shakespeare-target (held-out NLL {meta['metrics']['report_nll']} nats/char)"
    except FileNotFoundError:
        torch.manual_seed(0)
        model = GPT(RECIPES["shakespeare-target"].model).to(device).eval()
        prompt = torch.randint(0, model.config.vocab_size, (1, len(PROMPT)), generator=torch.Generator().manual_seed(0))
        label = "randomly initialised model (no shakespeare-target checkpoint found)"
    return model, prompt.to(device), label


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """Smallest wall time of ``repeats`` calls of ``fn`` (after one untimed warm-up), and its output."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed run per measurement")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 240], help="new tokens to generate")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats

    model, prompt, label = load_model(args.device)
    prompt = prompt.expand(args.batch, -1).contiguous()
    T, block = prompt.shape[1], model.config.block_size
    lengths = [n for n in args.lengths if T + n <= block]
    if len(lengths) < len(args.lengths):
        print(f"skipping lengths over the context: prompt {T} + new tokens must be <= {block}")
    try:
        from arlib.text.hf import to_hf

        hf = to_hf(model)
    except ImportError:
        hf = None
    print(f"model: {label}; {model.num_params():,} parameters; device {args.device}, "
          f"{torch.get_num_threads()} threads; batch {args.batch}, prompt {T} tokens, greedy, best of {repeats}")

    rows, mask = [], torch.ones_like(prompt)
    with torch.no_grad():
        for n in lengths:
            t_cache, out_cache = best_time(lambda n=n: generate(model, prompt, n, greedy=True), repeats)
            t_full, out_full = best_time(lambda n=n: generate(model, prompt, n, greedy=True, use_cache=False),
                                         repeats)
            assert torch.equal(out_cache, out_full), f"cache and no-cache outputs differ at {n} tokens"
            t_hf = None
            if hf is not None:
                t_hf, out_hf = best_time(lambda n=n: hf.generate(prompt, attention_mask=mask, max_new_tokens=n,
                                                                 do_sample=False, use_cache=True, pad_token_id=0),
                                         repeats)
                assert torch.equal(out_cache, out_hf), f"arlib and Hugging Face outputs differ at {n} tokens"
            rows.append((n, t_cache, t_full, t_hf))

    tokens = lambda n, t: args.batch * n / t
    header = f"{'new tokens':>10} | {'arlib cache':>12} | {'arlib no cache':>14} | {'HF generate':>12} | " \
             f"{'cache/no-cache':>14} | {'arlib/HF':>8}"
    print("\ntokens per second (higher is better)")
    print(header)
    print("-" * len(header))
    for n, t_cache, t_full, t_hf in rows:
        hf_rate = f"{tokens(n, t_hf):12.0f}" if t_hf else f"{'n/a':>12}"
        hf_ratio = f"{t_hf / t_cache:8.2f}" if t_hf else f"{'n/a':>8}"
        print(f"{n:>10} | {tokens(n, t_cache):12.0f} | {tokens(n, t_full):14.0f} | {hf_rate} | "
              f"{t_full / t_cache:14.2f} | {hf_ratio}")
    print("\ncache/no-cache: speed-up from the KV cache; arlib/HF: arlib's cached decoding over Hugging Face's "
          "cached generate on the same weights (same tokens, asserted)")


if __name__ == "__main__":
    main()
