# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The KV cache under pressure: paging, eviction, quantization and GEAR
#
# Chapter 1 built the KV cache: each layer keeps the keys and values of every position seen, so that a
# new token costs one pass over one position instead of a pass over the whole context. The price is
# memory. At every decoding step the model reads its whole cache, and in a serving system the cache,
# not the weights, decides how many requests fit on an accelerator at once. This chapter measures that
# pressure on the book's Shakespeare GPT and on published 7B-class shapes, and then builds, from scratch
# and on the book's model, what serving systems do about it:
#
# **You will learn**
# - how many bytes the cache takes per token and per request (multi-head, grouped-query and multi-query
#   attention), and what share of a decoding step goes to reading it {cite}`pope2023efficiently,shazeer2019fast`;
# - **paging** (PagedAttention {cite}`kwon2023efficient`): a block allocator, per-request block tables,
#   attention that reads through the table (equal to contiguous attention), copy-on-write sharing of a
#   prompt, and a simulated serving workload where paging fits more requests than contiguous
#   reservation {cite}`yu2022orca`;
# - **eviction**: a sliding window, StreamingLLM's attention sinks {cite}`xiao2024efficient` and H2O's
#   heavy hitters {cite}`zhang2023h2o`, at several budgets;
# - **quantization**: per-token and per-channel integer codes for keys and values, and KIVI's
#   observation that keys want per-channel and values per-token groups {cite}`liu2024kivi`;
# - **GEAR** {cite}`kang2024gear`: quantization, a low-rank approximation of its error and a few exact
#   outliers, each part's error measured on its own;
# - how to compare all of them honestly: at matched bytes per position, on held-out text, in NLL, in
#   agreement with the full cache, and in the acceptance rate speculative decoding would get if the
#   compressed model drafted for the full one (chapter 2).
#
# Everything runs on the book's target from chapter 1 (six layers, eight heads of dimension 32, a
# context of 256 characters). It is small, so some effects that matter at scale (a cache of gigabytes,
# contexts of a hundred thousand tokens) are computed from published shapes rather than run; the text
# says each time which is which.

# %% [markdown]
# ![The KV cache under pressure](../../figures/diagrams/07-kv-cache.svg)
#
# *Figure.* (a) PagedAttention stores each request's keys and values in blocks of 4 tokens, placed
# anywhere in one shared pool through a per-request block table: two samples of the same prompt share its
# blocks (reference count 2, copied on the first write), and memory is wasted only in each request's
# last, partly filled block; (b) eviction keeps a fixed budget of positions: the last w (sliding window),
# the first 4 plus the last w (attention sinks, StreamingLLM), or the most-attended plus the last w (heavy
# hitters, H2O); (c) compression keeps every position in fewer bits: GEAR splits the cache into low-bit
# codes, a low-rank correction of their error and a few exact outliers, and KIVI quantizes keys in
# per-channel groups and values in per-token groups.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

import arlib
import arlib.checks
from arlib.env import check_timing
from arlib.serving.evaluate import CacheQuality, cache_quality, full_logits, heldout_sequences
from arlib.serving.eviction import HeavyHitterCache, SinkCache, SlidingWindowCache
from arlib.serving.gear import GEARCache, gear_errors
from arlib.serving.memory import (
    LLAMA2_7B,
    MISTRAL_7B,
    MISTRAL_7B_MQA,
    ModelShape,
    crossover_context,
    decode_step_profile,
    decode_traffic,
    kv_bytes_per_token,
    requests_that_fit,
)
from arlib.serving.paged import PagedKVCache, blocks_for
from arlib.serving.quant import QuantizedCache, capture_kv, dequantize, fake_quantize, quantize, relative_error
from arlib.serving.scheduler import make_workload, parallel_sampling_blocks, simulate_serving, speech_lengths
from arlib.data import shakespeare
from arlib.text.gpt import GPTConfig
from arlib.text.ladder import bootstrap_interval

device = arlib.setup(seed=0)
checkpoint = arlib.load("shakespeare-target", device)
target, tokenizer = checkpoint.model, checkpoint.tokenizer
draft = arlib.load("shakespeare-draft", device).model
config = target.config
head_dim = config.n_embd // config.n_head
print(f"target: {config.n_layer} layers, {config.n_head} heads of dimension {head_dim}, context {config.block_size}, "
      f"{target.num_params():,} parameters")

# %% [markdown]
# ## 1. Memory, measured
#
# Every layer stores, for every position and every key/value head, one key and one value of $d_h$
# numbers. With $L$ layers, $H_{kv}$ key/value heads and $e$ bytes per number (2 for 16-bit numbers),
# one token costs
#
# ```{math}
# :label: eq-kv-bytes
# \text{bytes per token} = 2 \, L \, H_{kv} \, d_h \, e ,
# ```
#
# and a request of $n$ tokens holds $n$ times that, for as long as it runs
# {cite}`pope2023efficiently,kwon2023efficient`. Multi-head attention has $H_{kv} = H$; grouped-query
# attention shares each key/value head among $H / H_{kv}$ query heads {cite}`ainslie2023gqa`, and
# multi-query attention keeps a single one {cite}`shazeer2019fast` (chapter 1 added both to the book's
# GPT as `n_kv_head`). We check the formula against what the book's cache really holds, then apply it to
# the book's model and to published 7B-class shapes {cite}`touvron2023llama2,jiang2023mistral`.

# %%
cache = target.new_cache(1)
with torch.no_grad():
    target(torch.zeros(1, 100, dtype=torch.long, device=device), cache=cache)
book_shape = ModelShape.from_config(config, "book's target (MHA)")
per_token_fp32 = kv_bytes_per_token(config.n_layer, config.kv_heads, head_dim, bytes_per_value=4)
assert cache.stored_bytes() == 100 * per_token_fp32  # eq. (1), counted from the tensors the model filled
shapes = [book_shape,
          ModelShape.from_config(GPTConfig(**{**vars(config), "n_kv_head": 2}), "its GQA variant (2 KV heads)"),
          ModelShape.from_config(GPTConfig(**{**vars(config), "n_kv_head": 1}), "its MQA variant (1 KV head)"),
          LLAMA2_7B, MISTRAL_7B, MISTRAL_7B_MQA]
GPU_MEMORY = 80 * 10**9  # an 80 GB accelerator
print(f"{'model':>32} | {'H / H_kv':>8} | {'per token':>10} | {'one request, full context':>26} | "
      f"{'requests in 80 GB':>17} | {'cache = weights at':>18}")
for s in shapes:
    full = s.context * s.kv_bytes_per_token()
    fit = requests_that_fit(s, GPU_MEMORY, s.context) if s.n_params > 10**9 else math.nan
    print(f"{s.name:>32} | {s.n_head:>3} / {s.n_kv_head:<2} | {s.kv_bytes_per_token() / 1024:7.1f} KiB | "
          f"{full / 2**20:14.1f} MiB ({s.context:>5}) | {fit:>17.0f} | {crossover_context(s):>11,.0f} tokens")
print("16-bit numbers (e = 2); 'requests in 80 GB': full-context requests whose caches fit beside the 16-bit "
      "weights; last column: the context at which one request's cache weighs as much as the weights")
assert LLAMA2_7B.kv_bytes_per_token() == 512 * 1024  # 2 x 32 layers x 32 heads x 128 x 2 bytes
assert MISTRAL_7B.kv_bytes_per_token() * 4 == LLAMA2_7B.kv_bytes_per_token()  # 8 KV heads instead of 32
assert 25 <= requests_that_fit(LLAMA2_7B, GPU_MEMORY, 4096) <= 35  # "about thirty"
assert requests_that_fit(MISTRAL_7B, GPU_MEMORY, 4096) > 3 * requests_that_fit(LLAMA2_7B, GPU_MEMORY, 4096)
assert 1000 < crossover_context(book_shape) < 2000  # the book's cache outweighs its weights only past ~1,600 chars

# %% [markdown]
# A Llama-2-7B request at its full context of 4,096 tokens holds 2 GiB of cache: an 80 GB accelerator
# that holds the 13.5 GB of weights has room for about thirty such requests, and the batch, which is what
# makes serving efficient, is capped by the cache, not by the arithmetic. Grouped-query attention with 8
# key/value heads (Mistral-7B) divides the cache by four, and more than three times as many requests of
# 4,096 tokens fit; one key/value head divides it by thirty-two. The book's model is the other extreme:
# its cache would outweigh its 9.7 MB of weights (in 16 bits) only at about 1,600 characters, six times
# its context. (Mistral-7B's own sliding window of 4,096 tokens would cap its cache at half the 8,192 of
# the table, a first taste of section 3's eviction.) Its measurements below are about ratios that carry over (how much of the
# cache a method keeps, what that costs in quality), not about its absolute sizes.
#
# **Time.** A decoding step reads every weight once, shared by the batch, and every sequence's whole
# cache. On a GPU a step is bound by those reads, not by arithmetic: for a batch of $B$ sequences,
# multiplying by the weights does $2B/e$ operations per byte read, attention over the cache
# $2 (H/H_{kv})/e$ whatever the batch, both far
# below the hundreds of operations per byte an accelerator can do for each byte it reads
# {cite}`shazeer2019fast,pope2023efficiently`. So the cache's share of a step's time is close to its
# share of the bytes read, computed below for Llama-2-7B. Then we time the book's model on this machine:
# one cached decode step at several context lengths, split into the time spent inside attention over
# the cache and the time that exists because the cache holds earlier positions (the step minus the same
# step attending to its own key only; `arlib.serving.memory.decode_step_profile`). For one short request
# the weights dominate (the cache is 2 % of the bytes at 512 tokens); at a batch of 32 requests of
# 4,096 tokens the cache is 84 % of them: exactly the regime serving systems run in, and the reason
# the rest of this chapter exists.

# %%
print(f"{'context':>7} | " + " | ".join(f"Llama-2-7B, batch {B:<3} cache share" for B in (1, 8, 32)))
for n in (512, 1024, 2048, 4096):
    print(f"{n:>7} | " + " | ".join(f"{decode_traffic(LLAMA2_7B, n, B).cache_share:30.0%}" for B in (1, 8, 32)))
assert decode_traffic(LLAMA2_7B, 4096, 32).cache_share > 0.8  # a large batch at long context: mostly cache
assert decode_traffic(LLAMA2_7B, 512, 1).cache_share < 0.05  # one short request: mostly weights
assert decode_traffic(MISTRAL_7B, 4096, 32).cache_share < decode_traffic(LLAMA2_7B, 4096, 32).cache_share

contexts = [16, 64, 128, 256]
profile = {B: decode_step_profile(target, contexts, batch_size=B, repeats=10) for B in (1, 16)}
print(f"\nbook's target on this machine ({device.type}), one decode step:")
print(f"{'batch':>5} | {'context':>7} | {'step':>8} | {'in attend':>9} | {'due to the cache':>16}")
for B, rows in profile.items():
    for r in rows:
        print(f"{B:>5} | {r.context:>7} | {r.step_s * 1e3:6.2f}ms | {r.attend_share:9.0%} | {r.growth_share:16.0%}")
growth_16 = profile[16][-1].step_s / profile[16][0].step_s
check_timing(growth_16 > 1.1, f"at batch 16 a step at context 256 should cost more than at 16, got {growth_16:.2f}x")
check_timing(profile[16][-1].growth_share > 0.15,
             f"at batch 16 and 256 positions the cache should cause a good part of the step, got {profile[16][-1].growth_share:.0%}")

# %%
import json  # the committed benchmark run of the same profile (benchmarks/kv_cache.py), labelled as measured
from pathlib import Path

bench = json.loads(Path("../../data/results/kv-decode-cpu.json").read_text())
print(f"benchmarks/kv_cache.py on {bench['device_name']} ({bench['device']}, {bench['threads']} thread, "
      f"torch {bench['torch']}), {bench['date'][:10]}:")
for row in bench["rows"]:
    if row["context"] in (16, 256):
        print(f"  batch {row['batch_size']:>2}, context {row['context']:>3}: step {row['step_ms']:.2f} ms, "
              f"{row['growth_share']:.0%} of it due to the cache")

# %% [markdown]
# On this CPU the step grows with the context (asserted at batch 16: a step at 256 positions costs
# more than at 16), and at batch 16 and 256 positions a good part of the step, a third or more
# in our runs, exists because of the cache (asserted above 15 %). The reasons differ from a GPU's: at
# these sizes the fixed cost of each operation dominates a step, and the model's weights fit in the
# processor's caches, so the byte model is not what a CPU follows.
# A GPU run of `benchmarks/kv_cache.py` is the one to trust for serving; the byte model is what it should
# follow, and no GPU figure is shown here because none has been measured.
#
# ## 2. Paging: PagedAttention
#
# Before paging, a serving system gave each request one contiguous stretch of cache, reserved up front
# for the longest sequence the request might become, because it cannot know in advance how long the
# answer will be {cite}`yu2022orca`. Kwon et al. {cite}`kwon2023efficient` measured that most of that
# memory holds nothing: slots *reserved* for tokens not generated yet, slots never used because the
# request ended early (*internal fragmentation*), and free gaps too small for the next request
# (*external fragmentation*). Their remedy is the operating system's virtual memory. The cache is cut
# into blocks of $P$ positions; each request has a **block table** mapping its logical block $i$
# (positions $iP, \dots, (i+1)P - 1$) to a physical block anywhere in one pool; a block is allocated only
# when the request fills the previous one. A request of $n$ tokens then wastes at most $P - 1$ slots, in
# its last block. Attention is unchanged: query $i$ attends to the same keys, fetched block by block
# through the table. Blocks carry a reference count, so several requests can map the same physical
# block (for instance several samples of one prompt), and a request that writes into a shared block first
# copies it (*copy-on-write*).
#
# We build the lookup by hand first: a pool of blocks, a table, and the keys of one request read back in
# order (exercise 7.1 asks for the general version).

# %%
B_BLK, D_TOY = 4, 3
pool = torch.arange(6 * B_BLK * D_TOY, dtype=torch.float32).reshape(6, B_BLK, D_TOY)  # 6 physical blocks
table = torch.tensor([4, 1, 3])  # logical blocks 0, 1, 2 of one request live in physical blocks 4, 1, 3
length = 10  # positions 0..9: the last block is half full
keys = pool[table].reshape(-1, D_TOY)[:length]  # (10, 3): gather the blocks in logical order, drop the tail
for position in (0, 5, 9):  # position p lives in slot p % B of physical block table[p // B]
    assert torch.equal(keys[position], pool[table[position // B_BLK], position % B_BLK])
print(f"{length} positions in {len(table)} blocks of {B_BLK}: {len(table) * B_BLK - length} slots wasted, "
      f"all in the last block")

# %% [markdown]
# `arlib.serving.paged.PagedKVCache` does this for every layer and every row of a batch, and is a cache
# the book's GPT reads through its attention without any change to the model (section 7 of chapter 1
# introduced the cache interface: each layer hands its new keys and values to the cache, which stores
# them and attends). It must give exactly the model's logits with the contiguous cache, for a prompt
# processed in one call and for decoding steps, with a block size that does not divide the lengths. One
# simplification is the book's: PagedAttention proper is a GPU kernel that reads each block where it lies
# in memory, while `PagedKVCache` gathers a row's blocks into one contiguous tensor and runs ordinary
# attention on it. The numbers are the same (the check below), the cost is not: the gather copies the
# cache at every step, which a real kernel avoids.

# %%
prompt = tokenizer.encode(shakespeare().val[:100]).to(device)[None]  # (1, 100)
steps = tokenizer.encode(shakespeare().val[100:130]).to(device)[None]  # (1, 30): teacher-forced steps
with torch.no_grad():
    contiguous, paged = target.new_cache(1), PagedKVCache(config, 1, n_blocks=40, block_size=7, device=device)
    ref = [target(prompt, cache=contiguous)] + [target(steps[:, i:i + 1], cache=contiguous) for i in range(30)]
    got = [target(prompt, cache=paged)] + [target(steps[:, i:i + 1], cache=paged) for i in range(30)]
worst = max((a - b).abs().max().item() for a, b in zip(ref, got))
print(f"paged (blocks of 7) vs contiguous: largest logit difference {worst:.1e} over a prompt of 100 and 30 steps; "
      f"{paged.allocator.n_used} blocks in use for 130 positions, {paged.waste_bytes() / paged.bytes_per_block * 7:.0f} "
      f"slots wasted")
assert worst < 1e-4
assert paged.allocator.n_used == math.ceil(130 / 7) and paged.waste_bytes() < paged.bytes_per_block

# %% [markdown]
# **Sharing a prompt.** Sampling several answers to one prompt (or beam search) is where block sharing
# pays: the prompt is processed once, every sample maps its blocks, and only the block a sample writes
# into is copied. Four samples of a 100-character prompt, generated by the target with the paged cache:

# %%
n_samples, n_new = 4, 40
paged = PagedKVCache(config, 1, n_blocks=64, block_size=16, device=device)
gen = torch.Generator(device=device).manual_seed(7)
with torch.no_grad():
    logits = target(prompt, cache=paged)[:, -1]  # (1, V): the prompt, once
    for _ in range(n_samples - 1):
        paged.fork(0)  # a new row mapping the prompt's blocks
    shared_blocks = paged.allocator.n_used
    logits = logits.expand(n_samples, -1)
    for _ in range(n_new):
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)  # (4, 1)
        logits = target(token, cache=paged)[:, -1]
samples = [paged.block_table(r) for r in range(n_samples)]
unshared = n_samples * blocks_for(100 + n_new, 16)
print(f"after the prompt: {shared_blocks} blocks for {n_samples} rows; after {n_new} tokens each: "
      f"{paged.allocator.n_used} blocks, against {unshared} if every sample held its own copy")
assert shared_blocks == blocks_for(100, 16)  # the prompt is stored once
assert all(t[:6] == samples[0][:6] for t in samples)  # blocks 0..5 (positions 0..95) still shared by all
assert paged.allocator.n_used == 6 + n_samples * (blocks_for(100 + n_new, 16) - 6)  # the rest is private
model_free = parallel_sampling_blocks(100, [n_new] * n_samples, block_size=16)
assert model_free["trace"][-1] == paged.allocator.n_used  # the model-free counter agrees

# %% [markdown]
# The prompt's seventh block (positions 96 to 111) was shared too. Three of the samples copied it before
# writing their first new token into it (copy-on-write); the last one, then the only row still mapping
# it, wrote in place. The six full blocks before it stay shared for good.
#
# **A serving workload.** Does paging let more requests run at once? We simulate a server that decodes
# one token per running request per step (iteration-level scheduling {cite}`yu2022orca`), admits waiting
# requests first come, first served, and holds a fixed number of cache slots. Requests are real: a speech
# of the held-out plays as the prompt and the speech after it as the answer, arriving at random times.
# The contiguous server reserves, at admission, the whole context (256 positions, "Orca (Max)" in Kwon et
# al.), the next power of two of the request's true length ("Pow2"), or exactly its true length
# ("Oracle", which no real server knows). The paged server takes a block of 16 positions whenever a
# request fills one, and when it runs out it preempts the request admitted last and recomputes it later,
# as vLLM does. The simulation is model-free: it counts tokens, not seconds
# (`arlib.serving.scheduler.simulate_serving`).

# %%
lengths = speech_lengths(shakespeare().val)
workload = make_workload(lengths, n_requests=400, rate=0.5, max_len=config.block_size, seed=0)
print(f"{len(lengths)} speeches; requests: prompt {sum(r.prompt_len for r in workload) / 400:.0f} and answer "
      f"{sum(r.output_len for r in workload) / 400:.0f} characters on average")
servers = {"contiguous, reserve max": ("contiguous", "max"), "contiguous, reserve pow2": ("contiguous", "pow2"),
           "contiguous, oracle": ("contiguous", "oracle"), "paged, blocks of 16": ("paged", "max")}
serving = {}
print(f"{'capacity':>8} | {'server':>24} | {'mean batch':>10} | {'throughput':>10} | {'mean wait':>9} | "
      f"{'used':>5} | {'reserved':>8} | {'internal':>8} | {'external':>8}")
for capacity in (2048, 8192):
    for name, (policy, reserve) in servers.items():
        r = simulate_serving(workload, capacity, policy, block_size=16, max_len=config.block_size, reserve=reserve)
        serving[capacity, name] = r
        m = {k: v / capacity for k, v in r["memory"].items()}
        print(f"{capacity:>8} | {name:>24} | {r['mean_batch']:10.1f} | {r['throughput']:10.2f} | {r['mean_wait']:9.1f} | "
              f"{m['used']:5.0%} | {m['reserved']:8.0%} | {m['internal']:8.0%} | {m['external']:8.0%}")
tight = {name: serving[2048, name] for name in servers}  # memory is the bottleneck: requests queue
paged_r = tight["paged, blocks of 16"]
assert paged_r["mean_batch"] > 1.5 * tight["contiguous, reserve max"]["mean_batch"]
assert paged_r["mean_batch"] > 1.3 * tight["contiguous, oracle"]["mean_batch"]  # even knowing the lengths
assert paged_r["mean_wait"] < 0.6 * tight["contiguous, oracle"]["mean_wait"]
assert paged_r["memory"]["used"] > 1.5 * tight["contiguous, reserve max"]["memory"]["used"]
assert paged_r["memory"]["internal"] < 16 * paged_r["mean_batch"]  # under one block per running request
roomy = [serving[8192, name]["throughput"] for name in servers]  # memory to spare: every server keeps up
assert max(roomy) < 1.15 * min(roomy)
print(f"paged at 2,048 slots: {paged_r['preemptions']} preemptions, {paged_r['recomputed_tokens']:,} tokens recomputed "
      f"({paged_r['recomputed_tokens'] / sum(r.total for r in workload):.0%} of the workload's tokens)")

# %% [markdown]
# With 2,048 slots memory is the bottleneck and every server is overloaded (the requests offer about 35
# tokens per step, none serves more than 16), so the waits grow with the length of the trace and compare
# servers rather than predict a latency. Reserving the whole context for every
# request leaves fewer than half the slots holding keys (the "used" column): the rest is reserved for
# tokens not generated yet or never filled, because the average request needs 141 of its 256 positions.
# Paging keeps most of the memory in use, wasting only the tails of last blocks (under one block per
# running request, asserted), runs about twice as many requests at once, and so about doubles the
# throughput (tokens per step) and cuts the wait; it beats even the oracle that knows every answer's
# length, because the oracle must still reserve it at admission (all asserted). With 8,192 slots memory is
# no longer scarce, every server keeps up with the arrivals, and their throughputs agree within 15 %
# (asserted), although reserving the whole context still makes requests wait about 30 steps where paging
# admits them at once. Paging pays when memory is the limit, which for the 7B models of section 1 it is.
# Preempted requests are recomputed (printed above: a third of the workload's tokens at 2,048 slots) at
# no charge in this simulator; a real server pays a prefill for each, so the simulation overstates
# paging's gain when memory is this tight. Kwon et
# al. report 2-4x the throughput of the best contiguous systems on real traces with far longer outputs
# than our speeches {cite}`kwon2023efficient`; the simulator counts tokens, not seconds, so it shows the
# memory side of that gain, not the kernel's cost (the gather through the table: the paged decoding above
# ran the same model through it).
#
# ## 3. Eviction: keep fewer positions
#
# Paging wastes nothing, but it cannot make a long request's cache smaller. Eviction does: the cache
# keeps at most a *budget* of $k$ positions per layer and forgets the others, so a request's memory stops
# growing at $k$ positions. Which ones to keep is the whole question, and the answer is about attention:
# query $i$ reads $\mathrm{softmax}(q_i K^\top / \sqrt{d_h}) V$ over the positions kept, and evicting a
# key that the query would have weighted heavily changes its output most.
#
# - A **sliding window** keeps the last $k$ positions: recent characters matter most to a language model.
# - **Attention sinks** (StreamingLLM {cite}`xiao2024efficient`): Xiao et al. found that language models
#   put a large share of their attention on the very first tokens, whatever they are, because the
#   softmax must put its mass somewhere when no key is relevant; evicting those first tokens, as a window
#   does, wrecks the model. They keep the first 4 tokens plus a window of the last $k - 4$.
# - **Heavy hitters** (H2O {cite}`zhang2023h2o`): a few keys receive most of the attention, and which ones
#   can be read from the attention so far. H2O keeps the $k/2$ most recent positions and the $k/2$ whose
#   attention, summed over every query so far, is largest, per layer and per head, evicting greedily one
#   position per step.
#
# Do the book's model's heads have sinks? For each position we measure the attention it receives per
# query that sees it (its total attention divided by the number of queries after it), over 16 held-out
# sequences of 256 characters, and compare the first position with the others.

# %%
sequences = heldout_sequences(tokenizer, n=16, length=config.block_size).to(device)  # (16, 256)
probe = HeavyHitterCache(config, len(sequences), budget=config.block_size, device=device)  # keeps all: records scores
with torch.no_grad():
    target(sequences, cache=probe)
T = config.block_size
seen_by = torch.arange(T, 0, -1, device=device, dtype=torch.float32)  # queries that see position j: T - j
per_query = torch.stack([s.mean(dim=(0, 1)) for s in probe.scores]) / seen_by  # (L, T): mean over rows, heads
first_vs_rest = per_query[:, 0] / per_query[:, 1:].median(dim=1).values  # (L,)
print("attention received per query, position 0 over the median position, layer by layer: "
      + " ".join(f"{x:.1f}" for x in first_vs_rest.tolist()))
print("mean attention a query gives position 0, layer by layer: "
      + " ".join(f"{x:.2f}" for x in per_query[:, 0].tolist()))
per_head = torch.stack([s.mean(dim=0) for s in probe.scores]) / seen_by  # (L, H, T): mean over rows
print("the same, in the head that gives position 0 the most: "
      + " ".join(f"{x:.2f}" for x in per_head[:, :, 0].amax(dim=1).tolist()))
first4 = per_head[:, :, :4].sum(-1)  # (L, H): attention per query on the first 4 positions
print(f"heads whose queries give the first 4 positions more than a third of their attention: "
      f"{int((first4 > 1 / 3).sum())} of {first4.numel()}")
assert bool((first_vs_rest > 1).all()) and per_head[:, :, 0].max() < 0.1 and not bool((first4 > 1 / 3).any())

# %% [markdown]
# The book's model has no strong sink: position 0 receives a few times the attention of a typical
# position, but only a few percent of each query's attention, and no head gives the first four positions
# more than a third of its attention (printed above, and asserted). Xiao et al. found strong sinks even in
# models of 160M parameters trained from scratch; our much smaller character model, trained on windows of
# 256 characters that always start at position 0, has learned something milder. What it has learned about
# *position* will matter more below.
#
# **Quality against the budget.** Each method decodes the 16 held-out sequences with teacher forcing: the
# first 32 characters in one call (the prompt attends to all of itself, as in the papers), then one
# character at a time through the evicting cache, 223 predictions per sequence. Against the same model
# with its full cache we measure the increase in NLL (nats per character), the agreement of the two
# argmaxes, and $\sum_x \min(p(x), q(x)) = 1 - \mathrm{TV}(p, q)$, the probability that speculative
# decoding accepts a token drafted by the evicting model for the full one (chapter 2): a cheap cache is
# a cheap drafter {cite}`leviathan2023fast` (`arlib.serving.evaluate.cache_quality`). Intervals are 95 %
# bootstrap intervals over the sequences. Teacher forcing measures each prediction with the true text
# before it; it cannot show errors that build up over a long free-running generation, which is what the
# quantization papers worry about most, so small differences here are lower bounds.

# %%
reference = full_logits(target, sequences)  # (16, 256, V): the full cache's predictions, computed once
PREFILL = 32
results = {}


FULL_16 = kv_bytes_per_token(config.n_layer, config.kv_heads, head_dim, bytes_per_value=2)  # the full cache, 16-bit


def in_16_bits(make_cache):
    """The same cache, its full-precision numbers counted at 2 bytes, as a server keeps them (the book
    computes in 32-bit floats; codes, scales and factors are counted as each method stores them)."""
    def make(model, batch_size):
        cache = make_cache(model, batch_size)
        cache.bytes_per_number = 2
        return cache
    return make


def memory(q):
    """Bytes per position seen, relative to the full 16-bit cache."""
    return q.bytes_per_position / FULL_16


def measure(name, make_cache, model=target, ref=reference):
    """Run the quality harness once and keep the row (model, sequences, prefill fixed)."""
    q = cache_quality(model, sequences, in_16_bits(make_cache), prefill=PREFILL, reference_logits=ref)
    results[name] = q
    lo, hi = q.interval("nll_increase")[1:]
    print(f"{name:>34} | {memory(q):7.1%} | {q.nll_increase:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
          f"{q.agreement:9.3f} | {q.acceptance:10.3f}")
    return q


print(f"{'cache':>34} | {'memory':>7} | {'NLL increase [95% CI]':>23} | {'agreement':>9} | {'acceptance':>10}")
start = time.perf_counter()
measure("full", lambda m, B: m.new_cache(B))
BUDGETS = (16, 32, 64, 128)
for k in BUDGETS:
    measure(f"window {k}", lambda m, B, k=k: SlidingWindowCache(m.config, B, k, device=device))
    measure(f"sinks 4 + window {k - 4}", lambda m, B, k=k: SinkCache(m.config, B, k, n_sink=4, device=device))
    measure(f"H2O {k // 2} heavy + {k // 2} recent", lambda m, B, k=k: HeavyHitterCache(m.config, B, k, device=device))
print(f"({time.perf_counter() - start:.0f} s)")
assert abs(results["full"].nll_increase) < 1e-5 and results["full"].acceptance > 0.9999


def recomputed_window(k):
    """Xiao et al.'s 'sliding window with re-computation': at each step re-encode the last k characters
    from scratch (at positions 0..k-1), no cache kept between steps. Same metrics as cache_quality."""
    with torch.no_grad():
        q_logits = torch.stack([target(sequences[:, max(0, t - k + 1):t + 1])[:, -1]
                                for t in range(PREFILL, T - 1)], dim=1).double()  # (16, 223, V)
    log_q, log_p = q_logits.log_softmax(-1), reference[:, PREFILL:T - 1].double().log_softmax(-1)
    targets = sequences[:, PREFILL + 1:T, None]
    return CacheQuality(-log_q.gather(-1, targets)[..., 0].cpu(), -log_p.gather(-1, targets)[..., 0].cpu(),
                        (log_q.argmax(-1) == log_p.argmax(-1)).double().cpu(),
                        torch.minimum(log_p.exp(), log_q.exp()).sum(-1).cpu(),
                        bytes_per_position=k * FULL_16 / (T - 1), prefill=PREFILL)


for k in BUDGETS:
    q = results[f"window {k}, recomputed"] = recomputed_window(k)
    lo, hi = q.interval()[1:]
    print(f"{f'window {k}, recomputed':>34} | {memory(q):7.1%} | {q.nll_increase:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
          f"{q.agreement:9.3f} | {q.acceptance:10.3f}")

# %%
window, sinks, h2o = ({k: results[f"{prefix}"] for k, prefix in
                       zip(BUDGETS, names)} for names in
                      ([f"window {k}" for k in BUDGETS], [f"sinks 4 + window {k - 4}" for k in BUDGETS],
                       [f"H2O {k // 2} heavy + {k // 2} recent" for k in BUDGETS]))
for k in BUDGETS:  # at every budget: window < sinks < H2O, beyond the intervals
    assert window[k].interval()[1] > sinks[k].interval()[2] and sinks[k].interval()[1] > h2o[k].interval()[2]
assert window[128].nll_increase > 0.3 and h2o[64].nll_increase < 0.05 and h2o[128].interval()[2] < 0.01
assert all(q.acceptance > q.agreement for q in results.values() if q is not results["full"])
recomputed = {k: results[f"window {k}, recomputed"] for k in BUDGETS}
for k in (32, 64, 128):  # the same window, re-encoded from position 0: the loss was about positions
    assert recomputed[k].interval()[2] < sinks[k].interval()[1] and recomputed[k].nll_increase < window[k].nll_increase / 10

# What does H2O keep? The characters of the kept positions older than the recent half, against the text.
kept = torch.zeros(config.vocab_size)
fresh = HeavyHitterCache(config, len(sequences), 64, device=device)
with torch.no_grad():
    target(sequences[:, :PREFILL], cache=fresh)
    for t in range(PREFILL, T):
        target(sequences[:, t:t + 1], cache=fresh)
for layer in range(config.n_layer):
    positions = fresh.kept_positions(layer)  # (16, H, 64)
    old = positions < T - 32  # the heavy hitters, not the 32 most recent
    ids = sequences.gather(1, positions.flatten(1)).view_as(positions)[old]
    kept += torch.bincount(ids.cpu(), minlength=config.vocab_size)
text_share = torch.bincount(sequences[:, :T - 32].flatten().cpu(), minlength=config.vocab_size).float()
kept, text_share = kept / kept.sum(), text_share / text_share.sum()
newline = tokenizer.encode("\n").item()
first4 = torch.cat([fresh.kept_positions(layer).flatten() for layer in range(config.n_layer)])
first4 = (first4 < 4).float().sum() / (first4 < T - 32).float().sum()
print(f"newlines: {kept[newline]:.1%} of the heavy hitters, {text_share[newline]:.1%} of the text; "
      f"positions 0-3: {first4:.1%} of the heavy hitters, {4 / (T - 32):.1%} of the older positions")
assert kept[newline] > 1.5 * text_share[newline] and first4 > 2 * 4 / (T - 32)

# %% [markdown]
# The sliding window is a disaster on this model: keeping the last 128 of 255 characters still costs
# nearly half a nat per character, and at 64 the model agrees with itself about half of the time. Keeping
# the first four positions as well recovers most of the loss, although the model has no strong sink. H2O
# is far better than both at every budget (all three orderings beyond their intervals, asserted): at a
# quarter of the cache it costs 0.02 nats and agrees with the full cache 95 % of the time, at half it is
# within a hundredth of a nat. Its heavy hitters are telling: newlines, the starts of verse lines, are kept about
# twice as often as the text has them, and the first four positions several times as often.
#
# Why does losing the *start* hurt so much here? The book's GPT has learned absolute positions and was
# trained only on windows that begin at position 0: every query it ever saw could read position 0 and
# every position before it. Xiao et al.'s own baseline tests this: re-encode the last $k$ characters from
# scratch at every step, so that the window starts at position 0 as in training. The same 64 characters
# then cost about 0.02 nats instead of 0.97, better than sinks at every budget from 32 on (asserted): the
# cached window fails because its keys sit at positions the model never saw without their past, not
# because 64 characters are too few. Re-encoding costs a pass over $k$ positions per token, which is why
# nobody serves that way, and why StreamingLLM's sinks (for models whose positions can be re-assigned)
# and H2O's scores matter. H2O's accumulated scores find both kinds of key this model relies on, the
# structural ones (line starts) and the first ones. Acceptance is above agreement everywhere: where the
# argmaxes differ, the two distributions still overlap. The memory column counts kept keys and values
# only; H2O also keeps one score per kept key and head, 1/64 more here.
#
# **What this model cannot show.** StreamingLLM's headline is a model that keeps generating far beyond
# its training context with a fixed cache. That needs positions that can be re-assigned inside the cache:
# their models add rotary position embeddings at attention time, so a kept key can be given a new
# position. The book's GPT adds a learned embedding of the absolute position to its input, so a position
# is baked into every key when it is computed, there is no embedding for position 256 or beyond, and the
# model refuses to go there whatever its cache holds:

# %%
streaming = SinkCache(config, 1, budget=64, device=device)
with torch.no_grad():
    target(sequences[:1], cache=streaming)  # 256 positions seen, 64 kept
try:
    with torch.no_grad():
        target(sequences[:1, :1], cache=streaming)
    raise AssertionError("position 256 should be refused")
except ValueError as error:
    print(f"ValueError: {error}")

# %% [markdown]
# So every comparison in this chapter stays inside the 256 positions the model was trained on, where a
# budget of 64 already forgets three quarters of the context at the end of a sequence.
#
# ## 4. Quantization: keep every position in fewer bits
#
# Instead of forgetting positions, store each number with fewer bits. A group $G$ of numbers is stored as
# integer codes with a shared scale and minimum,
#
# ```{math}
# :label: eq-quant
# c = \mathrm{round}\!\left(\frac{x - \min G}{s}\right) \in \{0, \dots, 2^b - 1\}, \qquad
# s = \frac{\max G - \min G}{2^b - 1}, \qquad \hat x = c\, s + \min G ,
# ```
#
# so that rounding to the nearest code keeps every number within half a step: $|x - \hat x| \le s/2$.
# The step, and so the error, is set by the group's range: one outlier stretches it for every member.
# Which numbers share a group matters. A cache tensor is (positions $\times$ channels) per head, and a
# group can run along a token's channels (**per token**) or along one channel over consecutive tokens
# (**per channel**). Liu et al. (KIVI {cite}`liu2024kivi`) found that keys have a few channels of large
# magnitude, so per-token groups get a range stretched by them, while values show no such channels and
# their error is best kept per token, because each output mixes the values of the tokens attended to.
# KIVI therefore quantizes keys per channel and values per token, and keeps the most recent tokens in full
# precision (32 here): keys wait until a whole group of tokens is there, values until they leave the
# window (`arlib.serving.quant.QuantizedCache`).
#
# First the bound, on the model's real keys and values of the 16 sequences, at 8, 4 and 2 bits.

# %%
keys, values = (x.flatten(0, 1) for x in capture_kv(target, sequences))  # (L * 16, H, 256, d_h) each
for bits in (8, 4, 2):
    for x in (keys, values):
        q = quantize(x, bits, axis=-1, group_size=head_dim)  # per token: a head's 32 channels per group
        error = (x - dequantize(q)).abs()
        half_step = (q.scale / 2).repeat_interleave(head_dim, dim=-1)  # each entry's group's s / 2
        assert bool((error <= half_step + 1e-6).all())  # eq. (2): within half a step, everywhere
assert relative_error(keys, fake_quantize(keys, 8, "token", head_dim)) < 0.01
print("every entry within half a step of its code, at 8, 4 and 2 bits, keys and values")
print(f"{'bits':>4} | {'keys per token':>14} | {'keys per channel':>16} | {'values per token':>16} | "
      f"{'values per channel':>18}   (relative error, groups of 32)")
errors = {}
for bits in (4, 2):
    for name, x in (("keys", keys), ("values", values)):
        for grouping in ("token", "channel"):
            errors[bits, name, grouping] = relative_error(x, fake_quantize(x, bits, grouping, 32))
    print(f"{bits:>4} | " + " | ".join(f"{errors[bits, n, g]:>{w}.3f}" for (n, g), w in
                                      zip([("keys", "token"), ("keys", "channel"), ("values", "token"),
                                           ("values", "channel")], (14, 16, 16, 18))))
channel_scale = keys.unflatten(0, (config.n_layer, -1)).abs().amax(dim=(1, 3))  # (L, H, d_h): each channel's largest key
ratio = (channel_scale.amax(-1) / channel_scale.median(-1).values).median().item()
print(f"keys: a head's largest channel over its median channel, median over heads: {ratio:.1f}x")
centred = keys - keys.mean(dim=2, keepdim=True)  # each channel's mean over the tokens removed
centred_error = (centred - fake_quantize(centred, 2, "token", 32)).norm() / keys.norm()
print(f"2-bit keys per token, each channel's mean removed first: {centred_error:.3f} (per token {errors[2, 'keys', 'token']:.3f}, "
      f"per channel {errors[2, 'keys', 'channel']:.3f})")

# %%
assert all(errors[b, "keys", "channel"] < 0.5 * errors[b, "keys", "token"] for b in (4, 2))  # keys: per channel
assert centred_error > 0.8 * errors[2, "keys", "token"]  # the channels' offsets explain little of it
assert all(errors[b, "values", "channel"] < errors[b, "values", "token"] for b in (4, 2))  # values too, less so

# %% [markdown]
# Every code is within half a step (asserted on every entry at 8, 4 and 2 bits), and at 8 bits the keys
# come back to within 1 %. Keys quantized per channel lose less than half of what per-token groups lose
# (asserted), as KIVI found, although this model's keys have only a mild outlier channel (the largest
# channel of a head is about 1.4 times its median one), and removing each channel's mean before
# quantizing per token recovers little of the gap (asserted): the channels differ in spread, not only in
# offset. Values, unlike KIVI's models, also reconstruct slightly better per channel. Reconstruction error is not what matters,
# though: the model's predictions are. KIVI's cache (keys per channel, values per token, 32 recent tokens in
# full precision) and the two swapped groupings, at 2 bits:

# %%
print(f"{'cache':>34} | {'memory':>7} | {'NLL increase [95% CI]':>23} | {'agreement':>9} | {'acceptance':>10}")
for bits in (8, 4, 2):
    measure(f"KIVI {bits}-bit", lambda m, B, bits=bits: QuantizedCache(m.config, B, bits, device=device))
measure("2-bit, keys per token", lambda m, B: QuantizedCache(m.config, B, 2, key_grouping="token", device=device))
_ = measure("2-bit, values per channel",
            lambda m, B: QuantizedCache(m.config, B, 2, value_grouping="channel", device=device))

# %%
kivi2, keys_token, values_channel = (results[n] for n in ("KIVI 2-bit", "2-bit, keys per token",
                                                          "2-bit, values per channel"))
assert keys_token.interval()[1] > kivi2.interval()[2]  # keys per token: clearly worse
assert values_channel.interval()[1] < kivi2.interval()[2]  # values per channel: NLL within the intervals
paired = {metric: bootstrap_interval(kivi2.per_sequence(metric) - values_channel.per_sequence(metric))
          for metric in ("agreement", "acceptance")}  # the same sequences: paired differences
print("values per token minus per channel, paired over the 16 sequences: " + ", ".join(
    f"{metric} {m:+.4f} [{lo:+.4f}, {hi:+.4f}]" for metric, (m, lo, hi) in paired.items()))
assert paired["agreement"][1] > 0 and paired["acceptance"][1] > 0  # but per token agrees more, beyond the noise
assert results["KIVI 4-bit"].nll_increase < 0.002 and results["KIVI 4-bit"].agreement > 0.99
bits_per_number = 2 + 2 * 16 / 32  # codes, then a 16-bit scale and minimum per group of 32
expected = (223 * bits_per_number / 16 + 32) / 255  # quantized positions, then the 32 in full precision
assert abs(memory(kivi2) - expected) < 0.005

# %% [markdown]
# At 8 and 4 bits the quantized cache costs nothing measurable, and even 2 bits cost about a thousandth
# of a nat while the argmax changes 3 % of the time. Quantizing keys per token instead costs clearly more
# (beyond the intervals, asserted): KIVI's choice for keys holds on this model. For values the NLL cannot
# tell the groupings apart, but paired over the same sequences, per-token values agree with the full
# cache more often and would be accepted more often as drafts (both beyond their paired intervals,
# asserted): KIVI's choice for values holds too, by a small margin. The memory column counts what a
# packed implementation stores, with full-precision numbers at 16 bits: codes, a 16-bit scale and minimum
# per group of 32 (3 bits per number in all at 2 bits), and the 32 most recent tokens in full precision,
# an eighth of the 255 positions, which is why 2 bits cost 29 % rather than 19 % (asserted against this
# count).
#
# ## 5. GEAR: quantize, then correct the error
#
# Kang et al. {cite}`kang2024gear` observe that at 2 to 4 bits the quantization error is the problem, and
# that it has structure two cheap corrections can capture. GEAR stores a matrix $D$ of keys or values
# (positions $\times$ channels, per head) as
#
# ```{math}
# :label: eq-gear
# D \approx \underbrace{\mathrm{deq}(\mathrm{quant}(D - S))}_{\hat D} + L + S ,
# ```
#
# where $S$ holds the few largest and smallest entries exactly (a sparse matrix of outliers, a fraction
# of 2 % here), $\hat D$ is the low-bit quantization of the rest, and $L$ (here the low-rank part, not
# the number of layers) is a rank-$r$ approximation of what quantization left, $R = D - \hat D - S$,
# computed by a few steps of power iteration (a cheap truncated SVD). The paper sets the rank to a small
# fraction of the matrix's smaller side (2 to 5 %): on our heads of 32 channels that is rank 1. New
# tokens wait in a small full-precision buffer and are compressed a chunk at a time
# (`arlib.serving.gear`; it keeps the outliers out of their group's range instead of quantizing $D - S$
# with zeros in their place, the book's choice). First each part's contribution, on the real keys and
# values, with the groups of section 4 (keys per channel over 32 tokens, values per token):

# %%
print(f"{'':>8} {'bits':>4} | {'quant':>6} | {'+ outliers':>10} | {'+ low rank':>10} | {'GEAR (all)':>10} | "
      f"{'bytes vs 16-bit':>15}")
gear_parts = {}
for name, x, grouping in (("keys", keys, "channel"), ("values", values, "token")):
    for bits in (4, 2):
        e = gear_errors(x, bits, rank=1, outlier_fraction=0.02, grouping=grouping, group_size=32)
        gear_parts[name, bits] = e
        print(f"{name:>8} {bits:>4} | {e['quant']:6.3f} | {e['quant+outliers']:10.3f} | {e['quant+lowrank']:10.3f} | "
              f"{e['gear']:10.3f} | {e['bytes']['total'] / e['bytes']['fp16']:15.1%}")
        assert e["gear"] <= e["quant+outliers"] + 1e-9 and e["quant+lowrank"] <= e["quant"] + 1e-9  # L projects R
        assert e["quant+outliers"] < e["quant"] and e["gear"] < 0.95 * e["quant"]  # every part helps
for name in ("keys", "values"):  # the bytes of 2-bit GEAR spent on 4-bit codes instead
    g2, q4 = gear_parts[name, 2], gear_parts[name, 4]
    assert g2["bytes"]["total"] > 0.8 * q4["bytes"]["quant"] and g2["gear"] > 2 * q4["quant"]
print("4-bit codes alone: " + ", ".join(f"{n} {gear_parts[n, 4]['quant']:.3f} at "
                                        f"{gear_parts[n, 4]['bytes']['quant'] / gear_parts[n, 4]['bytes']['fp16']:.1%}"
                                        for n in ("keys", "values")))

# %% [markdown]
# Each part does what it should: the outliers and the rank-1 correction each lower the error, together by
# 5 to 15 %, and the low-rank part can never make it worse, being an orthogonal projection of the residual
# (asserted). But on this model the same bytes buy more as extra bits: 2-bit GEAR stores nearly as much as
# 4-bit codes alone (the outliers cost 48 bits each with their index), and its error is more than twice
# theirs (asserted). The paper's regime is different: heads of 128 channels, contexts of thousands of
# tokens and models whose quantization residuals have more structure, where a correction of a given rank
# is a small fraction of the codes. This section measures the parts on the book's model; it does not
# judge GEAR at that scale.

# %%
print(f"{'cache':>34} | {'memory':>7} | {'NLL increase [95% CI]':>23} | {'agreement':>9} | {'acceptance':>10}")
for bits in (4, 2):
    _ = measure(f"GEAR {bits}-bit, rank 1, 2 % outliers",
                lambda m, B, bits=bits: GEARCache(m.config, B, bits=bits, rank=1, outlier_fraction=0.02, device=device))

# %% [markdown]
# The cache follows GEAR's streaming scheme: the prompt is compressed as one chunk after it has attended,
# later tokens in chunks of 20. With keys grouped per channel, a chunk of 20 tokens has no outliers at 2 %
# (1 % at each end of a row of 20 rounds down to none, as in the reference code), so the outliers here
# are the values' and the prompt's.

# %% [markdown]
# ## 6. Every method at matched memory
#
# One plot and one table put every cache on the same axes: memory (bytes held per position seen, at the
# end of the sequence, relative to the full cache) against what it costs. A method is only better than
# another if it costs less *at the same memory*, and only if the difference is larger than its interval.
# To compare H2O with 2-bit KIVI at the same memory we add H2O with a budget of 74 positions (29 %). The
# last column is the acceptance rate $\beta = \sum_x \min(p(x), q(x))$ of chapter 2 that a compressed
# cache would give as a drafter of its own model: the model reading its compressed cache drafts, the same
# model with its full cache verifies, and speculative decoding restores exactly the full model's output.
# The book's separate draft model (chapter 1) is shown for comparison, with its full cache and with the
# KIVI 4-bit cache.

# %%
print(f"{'cache':>34} | {'memory':>7} | {'NLL increase [95% CI]':>23} | {'agreement':>9} | {'acceptance':>10}")
_ = measure("H2O 37 heavy + 37 recent", lambda m, B: HeavyHitterCache(m.config, B, 74, device=device))
_ = measure("draft model, full cache", lambda m, B: m.new_cache(B), model=draft)
_ = measure("draft model, KIVI 4-bit", lambda m, B: QuantizedCache(m.config, B, 4, device=device), model=draft)

families = {"sliding window": lambda n: n.startswith("window") and "recomputed" not in n,
            "window re-encoded (not a cache)": lambda n: n.endswith("recomputed"),
            "sinks": lambda n: n.startswith("sinks"), "H2O": lambda n: n.startswith("H2O"),
            "KIVI": lambda n: n.startswith("KIVI"), "GEAR": lambda n: n.startswith("GEAR")}
fig, ax = plt.subplots(figsize=(7, 4))
for label, belongs in families.items():
    rows = [(memory(q), q.nll_increase, q.interval("nll_increase"))
            for row_name, q in results.items() if belongs(row_name)]
    rows.sort()
    xs, ys = [r[0] for r in rows], [r[1] for r in rows]
    yerr = [[r[1] - r[2][1] for r in rows], [r[2][2] - r[1] for r in rows]]
    ax.errorbar(xs, ys, yerr=yerr, fmt="o-", capsize=2, label=label)
ax.set_xscale("log")
ax.set_yscale("symlog", linthresh=1e-3)
ax.set(xlabel="memory: bytes per position / full 16-bit cache", ylabel="NLL increase (nats/char)",
       title="the book's target on held-out Shakespeare, 16 x 223 predictions")
ax.axhline(0, color="gray", lw=0.8)
ax.legend(fontsize=8)
arlib.export_figure(fig, "quality-vs-memory")
plt.show()

# %%
print(f"{'cache, sorted by memory':>34} | {'memory':>7} | {'NLL increase [95% CI]':>23} | {'agreement':>9} | "
      f"{'acceptance':>10}")
for name, q in sorted(results.items(), key=lambda item: memory(item[1])):
    if not name.startswith("draft"):
        lo, hi = q.interval("nll_increase")[1:]
        print(f"{name:>34} | {memory(q):7.1%} | {q.nll_increase:+.3f} [{lo:+.3f}, {hi:+.3f}] | {q.agreement:9.3f} | "
              f"{q.acceptance:10.3f}")
h2o_matched, kivi_2 = results["H2O 37 heavy + 37 recent"], results["KIVI 2-bit"]
assert abs(memory(kivi_2) - memory(h2o_matched)) < 0.01  # matched memory, within 1 % of the full cache
assert kivi_2.interval()[2] < h2o_matched.interval()[1]  # and quantization costs less, beyond the intervals
gear_2 = results["GEAR 2-bit, rank 1, 2 % outliers"]
assert memory(gear_2) > memory(kivi_2) and gear_2.nll_increase < 0.02
assert results["KIVI 4-bit"].nll_increase <= gear_2.nll_increase and memory(results["KIVI 4-bit"]) < 1.5 * memory(gear_2)
draft_full, draft_kivi = results["draft model, full cache"], results["draft model, KIVI 4-bit"]
assert min(kivi_2.acceptance, h2o_matched.acceptance) > draft_full.acceptance + 0.1
assert abs(draft_kivi.acceptance - draft_full.acceptance) < 0.01

# %% [markdown]
# At matched memory the verdict on this model is clear. At 29 % of the 16-bit cache, KIVI's 2-bit
# quantization costs about a thousandth of a nat, while H2O keeping 74 positions costs between one and
# two hundredths, beyond the intervals (asserted): keeping every position coarsely beats keeping a
# third of them exactly. Windows and sinks are far behind. GEAR at 2 bits (rank 1) costs a few
# thousandths of a nat at a little more memory than KIVI's 2 bits, and KIVI's 4 bits cost less at under
# 1.5 times GEAR's memory (asserted): on heads of 32 channels and a context of 256, GEAR's corrections do
# not pay for their bytes (section 5), which says nothing of GEAR at the scale it was built for. All of
# these are teacher-forced next-character measurements; free-running generation would add the effect of
# errors that compound.
#
# The acceptance column is the one to read for drafting. A model reading its own 2-bit or H2O-evicted cache
# would see more than nine in ten of its drafts accepted by the same model with the full cache, against
# 0.83 for the book's separate draft model (asserted): a compressed cache is a far more faithful drafter
# of its own model. It is not a cheaper one here: each draft costs a full pass of the target, and the
# verifier still needs the full cache, so self-drafting saves reading bytes, not holding them. It pays
# only where a decoding step is bound by reading the cache (long contexts and large batches, section 1),
# and an evicting cache cannot roll back rejected drafts (its `crop` refuses: evicted positions are
# gone), so it would have to re-read the prompt after every rejection; a quantized cache can roll back
# within its full-precision window. Compressing the draft model's own cache (KIVI 4-bit) leaves its
# acceptance unchanged (asserted).

# %% [markdown]
# ## Exercises
#
# **Exercise 7.1** (reading through a block table; easy). Write `read_through_table(pool, table, length)`
# for a pool of physical blocks `pool` of shape $(N, B, \dots)$ ($N$ blocks of $B$ positions, any trailing
# dimensions such as heads and channels), a request's block table `table` (a long tensor of $n$ physical
# block numbers, one per logical block) and the number of positions `length` the request holds
# ($\le nB$; $B$ is the block size $P$ of section 2). Return the request's entries for positions $0, \dots, \text{length} - 1$ in order, a tensor
# of shape $(\text{length}, \dots)$. The check compares with a position-by-position lookup on tables in any
# physical order, half-full last blocks and pools with a head axis. Why does PagedAttention waste at most
# $P - 1$ slots per request, and what limits how small $B$ can be on a GPU?

# %%
def read_through_table(pool, table, length):
    """The entries of positions 0..length-1 of a request whose logical block i is physical block table[i]."""
    ### BEGIN SOLUTION
    blocks = pool[table]  # (n, B, ...): the request's blocks in logical order
    return blocks.reshape(-1, *pool.shape[2:])[:length]  # (n * B, ...) -> the first `length` positions
    ### END SOLUTION


# %%
arlib.checks.read_through_table(read_through_table)

# %% [markdown]
# **Exercise 7.2** (the attention-sink window mask; easy). Write `sink_window_mask(T, n_sink, window)`
# returning the boolean mask $(T, T)$ of StreamingLLM's attention over a sequence of $T$ positions: query
# $i$ sees key $j$ when $j \le i$ and either $j$ is one of the first `n_sink` positions or $i - j <$
# `window` (the last `window` positions, the query's own included). The check compares with the
# definition on plain sliding windows (`n_sink = 0`), windows longer than the sequence and more sinks than
# positions. A model evaluated with this mask in one pass and the same model decoding through a
# `SinkCache` with `budget = n_sink + window - 1` give the same predictions: why minus one?

# %%
def sink_window_mask(T, n_sink, window):
    """(T, T) bool: query i sees key j iff j <= i and (j < n_sink or i - j < window)."""
    ### BEGIN SOLUTION
    i = torch.arange(T)[:, None]  # (T, 1) queries
    j = torch.arange(T)[None, :]  # (1, T) keys
    return (j <= i) & ((j < n_sink) | (i - j < window))
    ### END SOLUTION


# %%
arlib.checks.sink_window_mask(sink_window_mask)

# %% [markdown]
# **Exercise 7.3** (per-channel quantization of keys; medium). Write `quantize_per_channel(keys, bits)`
# for keys of shape $(T, D)$ ($T$ tokens, $D$ channels) and an int `bits`. Quantize each channel (each
# column) as one group with eq. {eq}`eq-quant` (asymmetric, round to nearest, $2^b$ levels between the
# column's minimum and maximum) and return the dequantized keys $\hat x$, same shape. A constant column has
# a step of 0 and must come back unchanged. The check compares with the definition at 8, 4, 2 and 1 bits,
# on keys with one channel forty times larger than the others, and checks the bound $|x - \hat x| \le s/2$.
# On the outlier case, how would the error of the *other* channels change if you grouped per token
# instead? Relate your answer to the table of section 4.

# %%
def quantize_per_channel(keys, bits):
    """Each column of keys (T, D) quantized to `bits` bits between its min and max, returned dequantized."""
    ### BEGIN SOLUTION
    lo, hi = keys.amin(dim=0, keepdim=True), keys.amax(dim=0, keepdim=True)  # (1, D): each channel's range
    step = (hi - lo) / (2 ** bits - 1)
    safe = torch.where(step > 0, step, torch.ones_like(step))  # a constant channel: code 0 is exact
    codes = torch.round((keys - lo) / safe).clamp(0, 2 ** bits - 1)
    return codes * step + lo
    ### END SOLUTION


# %%
arlib.checks.quantize_per_channel(quantize_per_channel)

# %% [markdown]
# **Exercise 7.4** (GEAR's low-rank step; medium). Write `low_rank_residual(d, d_hat, rank)` for a matrix
# of keys or values `d` $(T, D)$ and its quantized reconstruction `d_hat` (same shape): return the best
# approximation $L$ of rank at most `rank` of the residual $R = d - \hat d$ in the Frobenius norm, the $L$ of
# eq. {eq}`eq-gear`. The check accepts any $L$ within 1 % of the Eckart-Young optimum whose rank is at most
# `rank` (a few steps of power iteration, as GEAR uses, would do), on random residuals, a residual of
# exactly the requested rank, and no residual at all. GEAR stores $L$ as two thin factors: how many numbers
# does that take for a 256 x 32 head at rank 4, against the residual itself?

# %%
def low_rank_residual(d, d_hat, rank):
    """The best rank-`rank` approximation of d - d_hat (T, D) in the Frobenius norm."""
    ### BEGIN SOLUTION
    U, S, Vh = torch.linalg.svd(d - d_hat, full_matrices=False)  # R = U diag(S) Vh
    return (U[:, :rank] * S[:rank]) @ Vh[:rank]  # Eckart-Young: keep the largest singular triplets
    ### END SOLUTION


# %%
arlib.checks.low_rank_residual(low_rank_residual)

# %% [markdown]
# ## Summary
#
# - The KV cache takes $2 L H_{kv} d_h b$ bytes per token: 512 KiB for Llama-2-7B, 2 GiB per request at
#   4,096 tokens, so about thirty full requests fit beside the weights on an 80 GB accelerator. Grouped-
#   and multi-query attention divide it by the group size. A decode step reads every sequence's cache;
#   at large batches and long contexts that is most of the bytes a step reads.
# - Paging (block tables, on-demand blocks, copy-on-write) gives exactly the same attention, wastes less
#   than a block per request, stores a shared prompt once, and when memory is the limit runs about twice
#   as many requests as contiguous reservation, on a simulated workload of real speeches.
# - Eviction on the book's model: a cached sliding window fails (its keys sit at positions the model never
#   saw without their past; re-encoding the same window from position 0 is nearly lossless), attention
#   sinks recover much of the loss, and H2O's heavy hitters (line starts and the first positions) cost
#   0.02 nats at a quarter of the cache. The model's absolute positions keep every experiment inside its
#   256-character context.
# - Quantization: keys want per-channel groups (measured, as KIVI found), 2-bit KIVI costs about a
#   thousandth of a nat; GEAR's outliers and low-rank correction each cut the quantization error, but on
#   heads of 32 channels and 256 positions the same bytes buy more as extra bits.
# - At matched memory, quantizing every position beats evicting most of them. A compressed cache drafts
#   for its own model far more faithfully than a separate small model, but on this CPU not more cheaply:
#   that pays only where reading the cache dominates a step.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```
