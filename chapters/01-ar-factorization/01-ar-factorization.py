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
# # Autoregressive factorization: from counting to a GPT
#
# An autoregressive model writes the probability of a sequence as a product of next-token
# probabilities and learns each factor. This chapter builds the idea from the ground up on
# Shakespeare's works, one character at a time: counting models, maximum likelihood, a GPT written
# from scratch {cite}`radford2019language,vaswani2017attention`, the ways to sample from it
# {cite}`holtzman2020curious,nguyen2025minp`, and the key-value cache that makes generation fast
# {cite}`pope2023efficiently`. It ends with two probes of what a next-token predictor does and does
# not learn: information about tokens further ahead, and the reversal curse {cite}`berglund2024reversal`.
#
# **You will learn**
# - why every joint distribution factorizes autoregressively, in any order;
# - how n-gram models, smoothed by Kneser–Ney {cite}`kneser1995improved,chen1999empirical`, set a
#   strong baseline, and how to measure any model by held-out NLL, perplexity and bits per character;
# - that maximizing likelihood = minimizing cross-entropy = minimizing KL divergence to the data;
# - how a GPT is assembled (head, multi-head attention, block, model) and trained with teacher forcing;
# - greedy, temperature, top-k, top-p and min-p sampling, and the KV cache;
# - what a next-token predictor knows about tokens further ahead, and what it fails to learn (the
#   reversal curse).
#
# The book's two Shakespeare models, a *target* GPT and a ten-times-smaller *draft*, are trained by
# recipes (`python -m arlib.recipes shakespeare-target`) and committed; chapters 2, 3 and 6 reuse them.

# %% [markdown]
# ![The chain rule and a GPT](../../figures/diagrams/01-ar-factorization.svg)
#
# *Figure.* The chain rule factorizes a sequence's probability into next-token conditionals (left), and a GPT computes all of them in one pass under a causal mask (the stack on the right).

# %%
import itertools
import math
import re
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

import arlib
import arlib.checks
from arlib.data import shakespeare
from arlib.text.gpt import GPT, GPTConfig, kv_cache_bytes
from arlib.text.hf import load_hf_folder, to_hf
from arlib.text.ladder import RUNGS, SIDE_RUNGS, attention_logit_spread, bootstrap_interval, load_ladder
from arlib.text.lm import heldout_halves, heldout_nll, next_token_loss, random_windows, token_nll
from arlib.text.ngram import NGramModel
from arlib.text.beam import beam_search
from arlib.text.sample_quality import distinct_n, match_entropy, real_word_share, repetition, truncated_entropy
from arlib.text.sampling import entropy, generate, process_logits
from arlib.text.tokenizer import CharTokenizer
from arlib.train import TrainConfig, train

device = arlib.setup(seed=0)
print(f"device: {device}")

# %% [markdown]
# ## 1. The chain rule
#
# For any random sequence $x = (x_1, \dots, x_T)$ the definition of conditional probability gives
#
# $$
# p(x_1, \dots, x_T) = \prod_{t=1}^{T} p(x_t \mid x_{<t}).
# $$ (eq-chain-rule)
#
# Nothing is assumed: the identity holds for *every* joint distribution and for *every* ordering of
# the variables. An autoregressive model picks one order (left to right for text) and learns the
# conditionals. We check the identity exactly on a random joint distribution of three variables with
# four values each, rebuilding it from its conditionals in all $3! = 6$ orders.

# %%
gen = torch.Generator().manual_seed(0)
joint = torch.rand(4, 4, 4, generator=gen, dtype=torch.float64)
joint /= joint.sum()  # p(x1, x2, x3)


def rebuild_from_conditionals(p, order):
    """Multiply p(x_a) p(x_b | x_a) p(x_c | x_a, x_b) for the order (a, b, c); return the joint."""
    q = p.permute(order)  # axes in the chosen order
    rebuilt = torch.ones_like(q)
    for d in range(q.dim()):
        marginal = q.sum(dim=tuple(range(d + 1, q.dim()))) if d + 1 < q.dim() else q  # p(first d+1 vars)
        conditional = marginal / marginal.sum(dim=-1, keepdim=True)  # p(var d | earlier vars)
        rebuilt = rebuilt * conditional.reshape(conditional.shape + (1,) * (q.dim() - d - 1))
    return rebuilt.permute(tuple(np.argsort(order)))  # back to (x1, x2, x3)


errors = {order: (rebuild_from_conditionals(joint, order) - joint).abs().max().item()
          for order in itertools.permutations(range(3))}
for order, err in errors.items():
    print(f"order x{order[0] + 1} -> x{order[1] + 1} -> x{order[2] + 1}: max error {err:.1e}")
assert max(errors.values()) < 1e-15  # every order rebuilds the joint exactly (to float64 rounding)

# %% [markdown]
# All orders are *equally valid* as factorizations, but not equally easy to *learn*: a model family
# that is good at one order's conditionals may be poor at another's. Section 8 shows a striking case.
#
# ## 2. Counting models on Shakespeare
#
# The simplest way to estimate $p(x_t \mid x_{<t})$ is to truncate the context to the last $n-1$
# characters and count. We score every model by its **held-out negative log-likelihood** per character
#
# $$
# \mathrm{NLL} = -\frac{1}{N} \sum_{t=1}^{N} \log p(x_t \mid x_{<t}) \ \text{nats},\qquad
# \text{perplexity} = e^{\mathrm{NLL}},\qquad \text{bits per char} = \mathrm{NLL} / \ln 2,
# $$ (eq-nll)
#
# on validation text no model saw during training. Raw counts give probability zero to any n-gram
# never seen in training, and one such character on the validation set makes the NLL infinite, so
# we smooth. *Add-k* adds a pseudo-count $k$ to every count, $p(w \mid h) = (c(hw) + k)/(c(h) + kV)$.
# *Interpolated Kneser–Ney* {cite}`kneser1995improved,chen1999empirical` subtracts a discount $D$ from
# every seen count and gives the freed mass to the model with one character less of context $h'$:
#
# $$
# p_{\mathrm{KN}}(w \mid h) = \frac{\max(c(hw) - D, 0)}{c(h)} + \frac{D \, N_{1+}(h\,\cdot)}{c(h)}\,
# p_{\mathrm{KN}}(w \mid h'),
# $$ (eq-kneser-ney)
#
# where $N_{1+}(h\,\cdot)$ is the number of distinct characters seen after $h$. The lower orders count
# not occurrences but *continuations*, in how many different contexts a character appears, which is
# the right statistic for a model consulted only when the longer context is rare.

# %%
corpus = shakespeare()
tokenizer = CharTokenizer.from_text(corpus.text)
train_ids, val_ids = tokenizer.encode(corpus.train), tokenizer.encode(corpus.val)
val_eval = val_ids[:50_000]  # a fixed 50k-character slice of the validation text, for every model
V = tokenizer.vocab_size
print(f"vocabulary: {V} characters; train {len(train_ids):,}, validation {len(val_ids):,} characters")

counting = {}
models = [("unigram", 1, "add_k"), ("bigram", 2, "add_k"), ("trigram (add-k)", 3, "add_k"),
          ("trigram (KN)", 3, "kneser_ney"), ("4-gram (KN)", 4, "kneser_ney"), ("5-gram (add-k)", 5, "add_k"),
          ("5-gram (KN)", 5, "kneser_ney")]
for name, order, smoothing in models:
    t0 = time.perf_counter()
    model = NGramModel(order, V, smoothing=smoothing, k=1.0).fit(train_ids)
    counting[name] = (model, model.nll(val_eval), time.perf_counter() - t0)

print(f"{'model':16s} {'NLL (nats)':>10s} {'perplexity':>10s} {'bits/char':>9s}")
for name, (_, value, _) in counting.items():
    print(f"{name:16s} {value:10.3f} {math.exp(value):10.2f} {value / math.log(2):9.3f}")  # NBVAL_CHECK_OUTPUT
print(f"fitting all {len(counting)} models took {sum(seconds for _, _, seconds in counting.values()):.1f} s")

# %% [markdown]
# More context helps a lot, and smoothing matters more as $n$ grows: a long context is usually rare,
# and add-one smoothing then hands most of the mass to unseen characters (after a context seen once,
# the 83 unseen characters get 83/85 of it), while Kneser–Ney hands it to the shorter context.
# Three checks tie these numbers to the theory. The unigram model's NLL is the *cross-entropy* between
# the validation characters' frequencies and the training frequencies, so by Gibbs' inequality it is
# at least the entropy of the validation frequencies themselves, and close to it since both halves
# are Shakespeare (section 3 makes the gap precise: it is a KL divergence). It is higher than the 4.80
# bits of chapter 0, which were the entropy of the *training* text; this 50k-character slice has a
# slightly different mix of characters. Each added character of context lowers the NLL, and the
# advantage of Kneser–Ney over add-one grows with the order.

# %%
nll = {name: value for name, (_, value, _) in counting.items()}
val_freq = torch.bincount(val_eval, minlength=V).double() / len(val_eval)
H_val = -(val_freq[val_freq > 0] * val_freq[val_freq > 0].log()).sum().item()
print(f"entropy of the validation characters {H_val:.4f} nats <= unigram NLL {nll['unigram']:.4f} nats")
assert H_val <= nll["unigram"] < H_val + 0.02
assert nll["unigram"] > nll["bigram"] > nll["trigram (KN)"] > nll["4-gram (KN)"] > nll["5-gram (KN)"]
assert nll["5-gram (add-k)"] - nll["5-gram (KN)"] > nll["trigram (add-k)"] - nll["trigram (KN)"] > 0

# Add-one smoothing from scratch (section 3 builds the same table) equals arlib's add-k bigram:
bigram_counts = torch.zeros(V, V).index_put_((train_ids[:-1], train_ids[1:]), torch.ones(len(train_ids) - 1),
                                             accumulate=True)
add_one_table = (bigram_counts + 1) / (bigram_counts + 1).sum(dim=1, keepdim=True)
arlib_table = counting["bigram"][0].probs(torch.arange(V)[:, None])  # (V, V): one row per previous character
assert torch.allclose(add_one_table.double(), arlib_table, atol=1e-6)

sample_gen = torch.Generator().manual_seed(1)
prompt = tokenizer.encode("Ham.\n")
for name in ["unigram", "bigram", "5-gram (KN)"]:
    text = tokenizer.decode(counting[name][0].sample(120, sample_gen, prompt=prompt))
    print(f"--- {name} ---\n{text}\n")

# %% [markdown]
# **Why smoothing matters more as $n$ grows: Zipf's law.** Sort the distinct $m$-grams of the training text
# by count and plot count against rank on log-log axes. Past the first few ranks the points fall near a
# straight line of slope close to $-1$, Zipf's law: a few strings are very frequent and a long tail of
# strings is rare. The longer the $m$-gram, the more of its types sit in that tail, seen once or twice,
# where a count is a poor estimate of a probability and the discount decides almost everything.

# %%
five = counting["5-gram (KN)"][0]
fig, ax = plt.subplots()
zipf_slope, singleton_share = {}, {}
for m in range(1, 6):
    ranked = five.count_ranks(m)  # counts of the distinct m-grams, largest first
    ax.loglog(np.arange(1, len(ranked) + 1), ranked, label=f"{m}-grams ({len(ranked):,} types)")
    middle = slice(10, max(20, len(ranked) // 10))  # past the head, before the flat tail of singletons
    zipf_slope[m] = np.polyfit(np.log(np.arange(1, len(ranked) + 1)[middle]), np.log(ranked[middle]), 1)[0]
    singleton_share[m] = (ranked == 1).mean()
    print(f"{m}-grams: {len(ranked):7,d} types, log-log slope {zipf_slope[m]:.2f}, seen once: {singleton_share[m]:.0%}")
ax.set_xlabel("rank")
ax.set_ylabel("count in the training text")
ax.legend(fontsize=8)
arlib.export_figure(fig, "zipf")  # into figures/ when `make execute` runs
plt.show()
assert all(-1.1 < zipf_slope[m] < -0.6 for m in (2, 3, 4, 5))  # close to Zipf's -1
assert all(singleton_share[m] < singleton_share[m + 1] for m in range(1, 5)) and singleton_share[5] > 1 / 3

# %% [markdown]
# ## 3. Maximum likelihood, cross-entropy and KL
#
# Training maximizes the likelihood of the training text, i.e. minimizes its NLL. If $\hat p$ is the
# empirical distribution of the data and $q$ the model,
#
# $$
# \underbrace{-\mathbb{E}_{x \sim \hat p} \log q(x)}_{\text{NLL = cross-entropy } H(\hat p, q)}
# = \underbrace{-\mathbb{E}_{x \sim \hat p} \log \hat p(x)}_{\text{entropy } H(\hat p)}
# + \underbrace{\mathbb{E}_{x \sim \hat p} \log \frac{\hat p(x)}{q(x)}}_{\mathrm{KL}(\hat p \,\|\, q) \,\ge\, 0}.
# $$ (eq-ce-kl)
#
# The entropy does not depend on $q$, so minimizing NLL *is* minimizing the KL divergence to the
# data, and its minimum, reached at $q = \hat p$, is the data's entropy. For a bigram model
# $q(b \mid a)$ the same holds conditionally: the NLL of the training pairs $(a, b)$ is
# $H(B \mid A) + \mathbb{E}_{a}\, \mathrm{KL}(\hat p(\cdot \mid a) \,\|\, q(\cdot \mid a))$, so the
# maximum-likelihood bigram model is the table of normalized counts. We check this on the training
# bigrams for the count table, the add-one table, and mixtures of the count table with a uniform guess.

# %%
pairs = train_ids[:-1] * V + train_ids[1:]
counts = torch.bincount(pairs, minlength=V * V).reshape(V, V).double()  # counts[a, b] = #(a followed by b)
p_data = counts / counts.sum()  # empirical joint of (previous, next)
mle = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)  # maximum likelihood: normalized counts
add_one = (counts + 1) / (counts + 1).sum(dim=1, keepdim=True)
seen = p_data > 0


def cross_entropy(q_cond):  # H(p_data, q) per character, in nats
    return -(p_data[seen] * q_cond[seen].log()).sum().item()


H_cond = cross_entropy(mle)  # the NLL of the count table is the conditional entropy H(B | A)
expected_kl = lambda q: (p_data[seen] * (mle[seen] / q[seen]).log()).sum().item()  # E_a KL(p(.|a) || q(.|a))
print(f"conditional entropy of the training bigrams H(B|A) = {H_cond:.4f} nats")
print(f"NLL of add-one: {cross_entropy(add_one):.4f} = {H_cond:.4f} + expected KL {expected_kl(add_one):.4f}")
assert expected_kl(add_one) > 0 and cross_entropy(add_one) > H_cond
uniform = torch.full_like(mle, 1 / V)
mixtures = [cross_entropy((1 - w) * mle + w * uniform) for w in (0.0, 0.01, 0.1, 0.5, 1.0)]
print("NLL of (1 - w) * counts + w * uniform for w = 0, 0.01, 0.1, 0.5, 1:", [round(m, 4) for m in mixtures])
assert all(a < b for a, b in zip(mixtures, mixtures[1:]))  # any move away from the MLE raises the training NLL
assert abs(mixtures[-1] - math.log(V)) < 1e-9  # and the uniform guess costs ln V
unseen_val = (counts[val_eval[:-1], val_eval[1:]] == 0).sum().item()
print(f"... but it gives probability 0 to {unseen_val} validation bigram(s), so its held-out NLL is infinite")
assert unseen_val > 0

# %% [markdown]
# **Gradient descent finds the same table.** A *neural* bigram model is a $V \times V$ matrix of logits
# $W$ with $q(b \mid a) = \mathrm{softmax}(W_a)_b$, trained by gradient descent on the NLL of the
# training pairs. That NLL depends on the data only through the counts, and by {eq}`eq-ce-kl` it is
# bounded below by $H(B \mid A)$ and reaches it only at the count table, so training must walk toward
# the table. We train $W$ from zero (the uniform guess) with Adam on the full batch of 4.6M pairs and
# measure how far it ends from the counts: in training NLL, and in the total variation between its rows
# and the count table's, weighted by how often each previous character occurs.

# %%
W = torch.zeros(V, V, dtype=torch.float64, requires_grad=True)  # logits, one row per previous character
optimizer = torch.optim.Adam([W], lr=0.5)
for _ in range(300):
    neural_nll = -(p_data * torch.log_softmax(W, dim=-1)).sum()  # NLL of all training pairs
    optimizer.zero_grad()
    neural_nll.backward()
    optimizer.step()
learned = torch.softmax(W.detach(), dim=-1)
row_weight = counts.sum(dim=1) / counts.sum()  # how often each previous character occurs
weighted_tv = (row_weight * 0.5 * (learned - mle).abs().sum(dim=1)).sum().item()
print(f"neural bigram after 300 steps: NLL {neural_nll.item():.5f} (count table {H_cond:.5f}); "
      f"weighted total variation to the count table {weighted_tv:.1e}")
assert 0 <= neural_nll.item() - H_cond < 1e-3  # the count table is the floor, and training reaches it
assert weighted_tv < 1e-3  # ... by learning the count table itself

# %% [markdown]
# ## 4. A GPT from scratch
#
# A GPT {cite}`radford2019language` maps a prefix to next-token logits with a stack of transformer
# blocks {cite}`vaswani2017attention`. We build it in four steps and then check it against `arlib`.
#
# **Step 1: one causal attention head.** Each position $t$ emits a query $q_t$, a key $k_t$ and a
# value $v_t$, three linear maps of its $d$-dimensional vector to $d_h$ dimensions. Stack them as the
# rows of matrices $Q, K, \mathbf{V} \in \mathbb{R}^{T \times d_h}$ (bold $\mathbf{V}$: the values, not
# the vocabulary size $V$). The head's output at $t$ is an average of the values of positions
# $s \le t$, weighted by how well their keys match its query:
#
# $$
# \mathrm{head}(X) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_h}} + M\right) \mathbf{V}, \qquad
# M_{ts} = \begin{cases} 0 & s \le t \\ -\infty & s > t. \end{cases}
# $$ (eq-attention)
#
# Why divide by $\sqrt{d_h}$ {cite}`vaswani2017attention`? If the entries of $q$ and $k$ are independent
# with mean 0 and variance 1 (roughly what a fresh initialization and LayerNorm give), $q \cdot k$ is a
# sum of $d_h$ such products and has variance $d_h$. The softmax of logits that spread that wide puts
# almost all its weight on one key, and its gradient with respect to the other keys nearly vanishes;
# dividing by $\sqrt{d_h}$ brings the variance back to 1 at any width. Measured over 64 keys:

# %%
print(f"{'d_h':>4} | {'var(q.k)':>8} | {'var(q.k / sqrt(d_h))':>20} | largest softmax weight: raw, scaled")
for d_head in (4, 16, 64, 256):
    spread = attention_logit_spread(d_head, n_keys=64)
    print(f"{d_head:4d} | {spread['raw_variance']:8.1f} | {spread['scaled_variance']:20.2f} | "
          f"{spread['raw_max_weight']:.2f}, {spread['scaled_max_weight']:.2f}")
    assert abs(spread["raw_variance"] / d_head - 1) < 0.1 and abs(spread["scaled_variance"] - 1) < 0.1
    if d_head >= 64:  # unscaled, wide heads attend to nearly one key; scaled ones spread their weight
        assert spread["raw_max_weight"] > 0.5 > 0.2 > spread["scaled_max_weight"]

# %%
class Head(nn.Module):
    """One causal self-attention head (eq. eq-attention)."""

    def __init__(self, d_model, d_head):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(d_model, d_head) for _ in range(3))

    def forward(self, x):  # x: (B, T, d_model) -> (B, T, d_head)
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])  # (B, T, T)
        T = x.shape[1]
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))  # position t cannot look at s > t
        return torch.softmax(scores, dim=-1) @ v


# %% [markdown]
# **Step 2: multi-head attention.** $H$ heads of width $d_h = d/H$ run in parallel and a linear map
# mixes their concatenated outputs. In practice one matrix computes all queries, keys and values at
# once and the heads become a tensor dimension, which is what we write next. A check that the
# batched form equals $H$ separate `Head`s with the corresponding slices of the weights:

# %%
class MultiHeadAttention(nn.Module):
    """H causal heads computed together: qkv in one matmul, heads as a tensor dimension."""

    def __init__(self, d_model, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d_model, 3 * d_model)  # [queries | keys | values] of all heads
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x):  # (B, T, d) -> (B, T, d)
        B, T, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(B, T, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, H, T, d_h)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.n_head)  # (B, H, T, T)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        y = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v  # (B, H, T, d_h)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, d))


mha = MultiHeadAttention(d_model=16, n_head=4)
heads = []
for h in range(4):
    head = Head(16, 4)
    for j, part in enumerate((head.query, head.key, head.value)):  # copy head h's slice of the fused weights
        rows = slice(j * 16 + h * 4, j * 16 + (h + 1) * 4)
        part.weight.data, part.bias.data = mha.c_attn.weight.data[rows], mha.c_attn.bias.data[rows]
    heads.append(head)
x = torch.randn(2, 7, 16)
with torch.no_grad():
    separate = mha.c_proj(torch.cat([head(x) for head in heads], dim=-1))
    assert torch.allclose(mha(x), separate, atol=1e-6)
print("multi-head attention == 4 separate heads, concatenated and projected")

# %% [markdown]
# **Step 3: a block.** Attention lets positions communicate; a position-wise MLP (width $4d$, GELU)
# then computes on each. GPT-2 puts a LayerNorm *before* each sub-layer and adds its output to a
# residual stream that runs through the whole network: $x \leftarrow x + \mathrm{MHA}(\mathrm{LN}(x))$,
# then $x \leftarrow x + \mathrm{MLP}(\mathrm{LN}(x))$.
#
# **Step 4: the model.** Token embeddings plus learned position embeddings enter the residual stream,
# $L$ blocks transform it, a final LayerNorm and a linear map to the vocabulary give the logits. The
# output map reuses the token embedding matrix (*tied* embeddings), saving $V d$ parameters.

# %%
class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), MultiHeadAttention(d, n_head)
        self.ln_2, self.mlp = nn.LayerNorm(d), MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # communicate
        return x + self.mlp(self.ln_2(x))  # compute


class ScratchGPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, d):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, d), nn.Embedding(block_size, d)
        self.h = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):  # (B, T) token ids -> (B, T, V) logits
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # tied output embedding


# %% [markdown]
# The parameter names match `arlib.text.gpt.GPT` (which follow Hugging Face's GPT-2), so the committed
# target model's weights load into the scratch model unchanged, and the two must agree.

# %%
checkpoint = arlib.load("shakespeare-target")
target, target_meta = checkpoint.model, checkpoint.meta
checkpoint = arlib.load("shakespeare-draft")
draft, draft_meta = checkpoint.model, checkpoint.meta
assert target_meta["tokenizer"]["vocab"] == draft_meta["tokenizer"]["vocab"] == tokenizer.vocab
cfg = target.config
scratch = ScratchGPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd)
scratch.load_state_dict(target.state_dict())
x = val_ids[1000:1256][None]
with torch.no_grad():
    max_diff = (scratch(x) - target(x)).abs().max().item()
print(f"target GPT: {target.num_params():,} parameters; scratch vs arlib max |logit difference| = {max_diff:.1e}")
assert max_diff < 1e-4

# %% [markdown]
# ## 5. Training
#
# **Teacher forcing.** For a training window of $T + 1$ characters, a GPT computes the $T$
# conditionals $p(x_{t+1} \mid x_{\le t})$ of {eq}`eq-chain-rule` in *one* forward pass (the first
# character is given, not predicted): position $t$ sees the true prefix (not the model's own guesses)
# and the causal mask hides the future. The loss is the mean of the $T$ next-character
# cross-entropies. We check on a small untrained GPT that one pass gives exactly the distributions
# that separate calls on growing prefixes give.

# %%
tiny = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
x = val_ids[:20][None]  # (1, 20)
with torch.no_grad():
    one_pass = torch.log_softmax(tiny(x), dim=-1)[0]  # (20, V): row i is log p(. | x[:i + 1]), 0-indexed
    step_by_step = torch.stack([torch.log_softmax(tiny(x[:, :t + 1]), dim=-1)[0, -1] for t in range(20)])
assert torch.allclose(one_pass, step_by_step, atol=1e-5)
loss = F.cross_entropy(tiny(x[:, :-1])[0], x[0, 1:]).item()
print(f"teacher forcing: one pass == 20 prefix calls; loss {loss:.3f} nats (untrained: about ln V = {math.log(V):.3f})")

# %% [markdown]
# Training minimizes this teacher-forced loss over random windows of the training text
# with AdamW, a linear warm-up and a cosine decay of the learning rate, and gradient clipping
# (`arlib.train`, the one loop every model in the book uses). A short live run of a tiny GPT shows
# the loss falling from $\ln V \approx 4.4$ nats, the loss of a uniform guess:

# %%
arlib.seed_everything(0)
small = GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=2, n_head=4, n_embd=64))
batches = lambda step, g: random_windows(train_ids, 16, 64, g)
t0 = time.perf_counter()
history = train(small, next_token_loss, batches, TrainConfig(steps=150, lr=3e-3, warmup=15, progress=False))
print(f"{small.num_params():,} parameters, 150 steps in {time.perf_counter() - t0:.1f} s; "
      f"loss {history['loss'][0]:.2f} -> {np.mean(history['loss'][-10:]):.2f}")
assert abs(history["loss"][0] - math.log(V)) < 0.3  # starts near a uniform guess
assert np.mean(history["loss"][-10:]) < nll["unigram"] - 0.5  # and learns far more than character frequencies
fig, ax = plt.subplots()
ax.plot(history["loss"], label="training loss (one batch)")
ax.axhline(math.log(V), color="gray", ls=":", label="uniform guess, ln V")
ax.axhline(nll["unigram"], color="C1", ls="--", label="unigram NLL")
ax.set_xlabel("step")
ax.set_ylabel("nats per character")
ax.legend()
plt.show()

# %% [markdown]
# The committed models are trained the same way for longer, on a GPU (their JSON sidecars record the
# recipe, the device, the data checksum, the wall time and the learning curve). The held-out text (the
# last 10 % of every work) is cut in two halves. The first, *select*, chose the dropout of each model
# and the step its weights were kept from (early stopping), and here it chooses the counting models'
# order and discount $D$. The second, *report*, chose nothing, so the numbers on it are honest
# estimates. A fair comparison gives counting its best shot: Kneser–Ney up to 8-grams with $D$ tuned,
# and beside it Chen and Goodman's *modified* Kneser–Ney {cite}`chen1999empirical`, which replaces the one
# discount by three, $D_1$, $D_2$ and $D_{3+}$ for n-grams seen once, twice and more often, each
# estimated in closed form from the counts of counts $n_r$ (the number of n-grams seen exactly $r$
# times): $Y = n_1 / (n_1 + 2 n_2)$, $D_r = r - (r + 1)\, Y n_{r+1} / n_r$. It needs no tuning at all.

# %%
select_ids, report_ids = heldout_halves(val_ids)
select_eval, report_eval = select_ids[:50_000], report_ids[:50_000]  # 50k characters of each half
t0 = time.perf_counter()
tuned = {}  # (order, D) -> NLL on the select slice
for order in (5, 6, 7, 8):
    kn = NGramModel(order, V, smoothing="kneser_ney").fit(train_ids)
    for D in (0.7, 0.8, 0.9, 1.0):
        kn.discount = D
        tuned[order, D] = kn.nll(select_eval)
best_order, best_D = min(tuned, key=tuned.get)
best_kn = NGramModel(best_order, V, smoothing="kneser_ney", discount=best_D).fit(train_ids)
modified_kn = NGramModel(best_order, V, smoothing="modified_kneser_ney").fit(train_ids)  # nothing to tune
print(f"Kneser-Ney tuned on the select slice in {time.perf_counter() - t0:.0f} s: best order {best_order}, "
      f"D = {best_D}; NLL by order at its best D:",
      {o: round(min(v for (oo, _), v in tuned.items() if oo == o), 3) for o in (5, 6, 7, 8)})

rows = [("unigram", "-", counting["unigram"][0].nll(report_eval)),
        ("bigram", "-", counting["bigram"][0].nll(report_eval)),
        ("trigram (KN)", "-", counting["trigram (KN)"][0].nll(report_eval)),
        ("5-gram (KN)", "-", counting["5-gram (KN)"][0].nll(report_eval)),
        (f"{best_order}-gram, D={best_D}", "-", best_kn.nll(report_eval)),
        (f"{best_order}-gram, modified KN", "-", modified_kn.nll(report_eval))]
for name, model in [("draft GPT", draft), ("target GPT", target)]:
    rows.append((name, f"{model.num_params():,}", heldout_nll(model, report_eval)))
print(f"{'model (report slice)':20s} {'parameters':>11s} {'NLL':>7s} {'ppl':>6s} {'bits/char':>9s}")
for name, params, value in rows:
    print(f"{name:20s} {params:>11s} {value:7.3f} {math.exp(value):6.2f} {value / math.log(2):9.3f}")
report_nll = {name: value for name, _, value in rows}
best_counting = report_nll[f"{best_order}-gram, D={best_D}"]
print(f"whole report half (from the sidecars): draft {draft_meta['metrics']['report_nll']}, "
      f"target {target_meta['metrics']['report_nll']} nats/char")

# %%
assert best_counting < report_nll["5-gram (KN)"] - 0.03  # tuning and longer contexts help counting too
modified_gap = report_nll[f"{best_order}-gram, modified KN"] - best_counting
assert abs(modified_gap) < 0.01  # three discounts estimated from counts of counts match one tuned discount
assert report_nll["target GPT"] < best_counting - 0.05  # the target beats the best counting model
assert report_nll["draft GPT"] < report_nll["trigram (KN)"]  # and the draft beats the trigram
assert report_nll["target GPT"] < report_nll["draft GPT"] - 0.05  # ten times the parameters: clearly better
assert draft.num_params() <= target.num_params() / 10

# %% [markdown]
# With its context tuned, counting improves from the 5-gram to the best tuned model; modified Kneser–Ney,
# untuned, lands within 0.01 nats of the tuned single discount. The target GPT beats both by a wide
# margin, and even the draft, with 440k parameters and two layers, beats the trigram. The learning curve from the target's sidecar shows when the GPT passed counting: its NLL on the
# select half against the characters it had seen, beside the counting models on the same half.

# %%
curve = target_meta["metrics"]["curve"]  # an evaluation every 500 steps
seen = np.array([point["chars_seen"] for point in curve]) / 1e6
select_curve = np.array([point["select_nll"] for point in curve])
train_curve = np.array([point["train_nll"] for point in curve])
lines = {"trigram (KN)": counting["trigram (KN)"][0].nll(select_ids),
         "5-gram (KN)": counting["5-gram (KN)"][0].nll(select_ids),
         f"best counting ({best_order}-gram)": best_kn.nll(select_ids)}
passed = seen[np.argmax(select_curve < lines[f"best counting ({best_order}-gram)"])]
passes = target_meta["train"]["steps"] * target_meta["train"]["batch_size"] * cfg.block_size / len(train_ids)
fig, ax = plt.subplots()
ax.plot(seen, train_curve, "o-", ms=3, label="target GPT, training text (eval mode)")
ax.plot(seen, select_curve, "o-", ms=3, label="target GPT, select half")
for (name, value), style in zip(lines.items(), [":", "--", "-."]):
    ax.axhline(value, color="gray", ls=style, label=name)
ax.axvline(passed, color="C3", lw=0.8)
ax.annotate(f"passes the best counting model\nafter {passed:.0f}M characters", (passed, 1.05),
            xytext=(6, 0), textcoords="offset points", color="C3", fontsize=8)
ax.set_xlabel("characters seen in training (millions)")
ax.set_ylabel("nats per character")
ax.set_ylim(1.0, 2.1)
ax.legend(fontsize=8)
arlib.export_figure(fig, "learning-curve")  # into figures/ when `make execute` runs
plt.show()
gpu = target_meta["environment"].get("gpu", target_meta["environment"]["device"])
print(f"target's recipe: {target_meta['train']['steps']} steps of {target_meta['train']['batch_size']} windows = "
      f"{passes:.1f} passes over the training text, {target_meta['wall_seconds'] / 60:.1f} min on one {gpu}; "
      f"dropout {target.config.dropout} chosen among {sorted({r['dropout'] for r in target_meta['sweep']})}")
drop_last = select_curve[-2] - select_curve[-1]
print(f"select NLL over the last 500 steps: {select_curve[-2]:.4f} -> {select_curve[-1]:.4f}")

# %%
assert passed < seen[-1] / 2  # the GPT passes the best counting model in the first half of its training
assert passed * 1e6 / len(train_ids) > 2  # ... but only after several passes over the training text
assert select_curve[-1] == min(select_curve)  # the weights kept are the best evaluation's
assert 0 <= drop_last < 0.02  # still improving at the end, but slowly: close to what this recipe reaches
assert train_curve[-1] < select_curve[-1]  # with 17 passes the model fits its training text better

# %% [markdown]
# Where does each model win? We split the report slice's characters by how often their 4-character
# context occurs in the training text, and compare the target with the best counting model.

# %%
gpt_tokens = token_nll(target, report_eval)  # -log p(x_t | x_<t) for every character of the slice
ngram_tokens = best_kn.token_nll(report_eval).float()
assert abs(gpt_tokens.mean().item() - report_nll["target GPT"]) < 1e-4  # the same numbers as the table

# how often each 4-character context (ending at t) occurs in the training text
codes = lambda x: ((x[:-3] * V + x[1:-2]) * V + x[2:-1]) * V + x[3:]
train_codes, train_counts = torch.unique(codes(train_ids), return_counts=True)
query = codes(report_eval[:-1])  # contexts of the characters report_eval[4:]
where = torch.searchsorted(train_codes, query).clamp(max=len(train_codes) - 1)
context_count = torch.where(train_codes[where] == query, train_counts[where], 0)
nll_gpt, nll_count = gpt_tokens[3:], ngram_tokens[3:]  # the same characters, report_eval[4:]
buckets = [(0, 10, "0-9"), (10, 100, "10-99"), (100, 1000, "100-999"), (1000, 10**9, "1000+")]
by_bucket = {}
print(f"{'context seen':>12s} {'share':>6s} {'GPT':>6s} {'counting':>8s}")
for lo, hi, label in buckets:
    m = (context_count >= lo) & (context_count < hi)
    by_bucket[label] = (m.float().mean().item(), nll_gpt[m].mean().item(), nll_count[m].mean().item())
    print(f"{label:>12s} {by_bucket[label][0]:6.3f} {by_bucket[label][1]:6.3f} {by_bucket[label][2]:8.3f}")

# Mix the two: p = lambda * p_GPT + (1 - lambda) * p_counting, with lambda tuned on the select slice.
mix = lambda lam, a, b: (-torch.log(lam * torch.exp(-a) + (1 - lam) * torch.exp(-b))).mean().item()
tune_gpt, tune_count = token_nll(target, select_eval), best_kn.token_nll(select_eval).float()
lambdas = np.linspace(0.05, 0.95, 19)
lam = lambdas[int(np.argmin([mix(l, tune_gpt, tune_count) for l in lambdas]))]
mixture_nll = mix(lam, gpt_tokens, ngram_tokens)
print(f"mixture with lambda = {lam:.2f} (tuned on the select slice): NLL {mixture_nll:.3f} "
      f"(GPT {gpt_tokens.mean():.3f}, counting {ngram_tokens.mean():.3f})")

# %%
advantage = {label: by_bucket[label][2] - by_bucket[label][1] for label in by_bucket}  # counting minus GPT
assert min(advantage.values()) > 0.05  # the GPT wins in every bucket, rare contexts included ...
assert min(advantage, key=advantage.get) == "0-9"  # ... and by the least where contexts are rare
assert lam > 0.5  # the mixture leans on the GPT ...
assert mixture_nll < gpt_tokens.mean() - 0.005  # ... and the counts still add a little

# %% [markdown]
# The GPT wins in every bucket, and by the least on characters whose context is rare in the training
# text (names, unusual words). That is where counting is strongest: a count model memorizes every string
# after one pass over the data, while a network trained by stochastic gradient descent needs many passes
# to learn a rare string. The curve above shows the cost: the GPT passed the best counting model only
# after several passes, and an earlier version of this target, trained for 1.35 passes on two CPU cores,
# still lost to the 5-gram. The mixture gains a little over the GPT alone, so the counts still hold some
# knowledge of rare strings that the GPT has not absorbed. The learning curve was still falling slowly
# when the recipe ended: a longer run would lower it a little further.

# %% [markdown]
# **An ablation ladder: which parts of the GPT matter?** The GPT combines several ideas at once. To see
# what each buys, a recipe (`python -m arlib.text.ladder`, about an hour on one CPU core; its results are
# committed) trains six models, each adding one idea to the one before, with the same optimizer, batch
# (32 windows of 64 characters), context and number of steps (3,000, or 6.1M characters):
#
# 1. a **neural bigram**: the table of logits from section 3, trained on windows like the others;
# 2. Bengio et al.'s **window MLP** {cite}`bengio2003neural`: the embeddings of the last 8 characters,
#    concatenated, through one tanh layer;
# 3. **single-head attention**: four layers of one causal head each, nothing else, so every position
#    can read the whole context but each layer replaces its input;
# 4. **multi-head attention and an MLP** in each of the four layers, still without residuals;
# 5. **residual connections and LayerNorm**, placed as in the original Transformer
#    {cite}`vaswani2017attention` (*post-LN*: $x \leftarrow \mathrm{LN}(x + \mathrm{sublayer}(x))$);
# 6. **the book's GPT** at the same size: LayerNorm before each sub-layer and at the end (GPT-2's *pre-LN*
#    {cite}`radford2019language`, analysed by Xiong et al. {cite}`xiong2020layer`), GPT-2's initialization
#    and a tied output matrix.
#
# Rungs 3 to 6 share depth (4), width (64) and heads (4; one in rung 3). Three seeds per rung; the change
# from one rung to the next comes with a 95 % interval from a paired bootstrap over 1,000-character
# blocks of the report half (neighbouring characters' losses are correlated, so blocks, not characters,
# are resampled), on the losses averaged over the seeds.

# %%
ladder = load_ladder()
seeds = ladder["seeds"]
ladder_rows = {}
for rung in RUNGS + tuple(SIDE_RUNGS):
    runs = ladder["rungs"][rung]
    nlls = np.array([run["report_nll"] for run in runs])
    blocks = np.mean([run["report_blocks"] for run in runs], axis=0)  # seed-averaged block means
    ladder_rows[rung] = dict(params=runs[0]["parameters"], nll=nlls.mean(), seed_sd=nlls.std(ddof=1), blocks=blocks,
                             curve=np.mean([run["curve_per_100_steps"] for run in runs], axis=0))
count_bigram_report = counting["bigram"][0].nll(report_ids)
print(f"{'rung':18s} {'parameters':>10s} {'report NLL':>10s} {'seed sd':>7s} | change from the rung before [95 % CI]")
previous = None
steps_up = {}
for rung in RUNGS:
    row = ladder_rows[rung]
    line = f"{rung:18s} {row['params']:10,d} {row['nll']:10.3f} {row['seed_sd']:7.3f}"
    if previous is not None:
        steps_up[rung] = bootstrap_interval(row["blocks"], ladder_rows[previous]["blocks"])
        line += " | {:+.3f} [{:+.3f}, {:+.3f}]".format(*steps_up[rung])
    print(line)
    previous = rung
print("controls, rungs 3 and 4 with one layer instead of four:")
for rung in SIDE_RUNGS:
    row = ladder_rows[rung]
    print(f"{rung:18s} {row['params']:10,d} {row['nll']:10.3f} {row['seed_sd']:7.3f}")
print(f"count-table bigram (add-one) on the report half: {count_bigram_report:.3f}; "
      f"the committed target (256 characters of context, 4.8M parameters, 17 passes): "
      f"{target_meta['metrics']['report_nll']:.3f}")
ladder_seconds = sum(run["seconds"] for runs in ladder["rungs"].values() for run in runs)
print(f"ladder recipe: {ladder_seconds / 60:.0f} min of training on {ladder['environment']['device']}, "
      f"{ladder['environment']['trained_on']}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
steps_axis = 100 * (np.arange(len(ladder_rows["gpt"]["curve"])) + 1)
for i, rung in enumerate(RUNGS):
    row = ladder_rows[rung]
    ax1.plot(steps_axis, row["curve"], label=rung, color=f"C{i}")
    ax2.errorbar(i, row["nll"], yerr=2 * row["seed_sd"], fmt="o", color=f"C{i}", capsize=3)
ax1.set(xlabel="training step", ylabel="training loss (nats, mean of 100 steps)", ylim=(1.2, 3.6))
ax1.legend(fontsize=8)
ax2.axhline(count_bigram_report, color="gray", ls=":", label="count-table bigram")
ax2.axhline(report_nll[f"{best_order}-gram, D={best_D}"], color="gray", ls="-.", label="best counting (slice)")
ax2.set_xticks(range(len(RUNGS)), RUNGS, rotation=30, fontsize=8)
ax2.set(ylabel="report NLL (nats/char, +-2 seed sd)")
ax2.legend(fontsize=8)
arlib.export_figure(fig, "ablation-ladder")  # into figures/ when `make execute` runs
plt.show()

# %%
nll_of_rung = {rung: row["nll"] for rung, row in ladder_rows.items()}
assert abs(nll_of_rung["bigram"] - count_bigram_report) < 0.01  # gradient descent lands on the count table
assert steps_up["window-mlp"][2] < -0.5  # eight characters of context: a large step down
for rung in ("one-head", "heads+mlp"):  # four layers without residual connections do not train ...
    assert nll_of_rung[rung] > nll_of_rung["bigram"]
assert abs(nll_of_rung["heads+mlp"] - counting["unigram"][0].nll(report_ids)) < 0.01  # ... this one is a unigram
assert nll_of_rung["one-head, 1 layer"] < nll_of_rung["bigram"]  # ... while one such layer does
assert nll_of_rung["heads+mlp, 1 layer"] < nll_of_rung["one-head, 1 layer"] - 0.3
assert bootstrap_interval(ladder_rows["residual+ln"]["blocks"], ladder_rows["window-mlp"]["blocks"])[2] < -0.05
assert steps_up["gpt"][1] > 0  # at this size and budget, post-LN ends below pre-LN
assert nll_of_rung["residual+ln"] > report_nll[f"{best_order}-gram, D={best_D}"]  # no small rung beats counting

# %% [markdown]
# Gradient descent on the bigram table lands on the count table's held-out NLL, as section 3 predicts.
# Eight characters of context in Bengio et al.'s MLP take off more than 0.8 nats. Then a surprise for
# anyone who thinks of attention as the key idea: four layers of attention *without residual
# connections* do not train at all in this budget. The multi-head stack ends exactly at the unigram
# model's NLL (it learned the character frequencies and nothing else), and the single-head stack above
# the bigram; with one layer instead of four (the controls) both train, so what fails is depth, not
# attention. The likely reason: each layer must pass on everything the next needs through an attention
# average, and the training signal of the first layers must cross all the others. Residual connections give every
# layer a direct path to the input and the output {cite}`he2016deep`, and with them the same four layers
# beat the window MLP clearly. The book's pre-LN GPT ends slightly *above* the post-LN model here: pre-LN
# is not better at a given size, it is stabler, training deep models at high learning rates without
# warm-up {cite}`xiong2020layer`, which this shallow ladder does not need. And none of these small,
# briefly trained models reaches the tuned 8-gram: the committed target, 23 times larger and trained on
# 17 passes over the text, is what it takes.

# %% [markdown]
# ## 6. Sampling
#
# A trained model gives a distribution over the next character; a *decoding strategy* turns it into
# text. Greedy decoding takes the most likely token; sampling draws from $\mathrm{softmax}(z / \tau)$
# at temperature $\tau$ (lower is sharper). Truncation methods sample only from a trusted head of the
# distribution: **top-k** keeps the $k$ most likely tokens {cite}`fan2018hierarchical`, **top-p** (nucleus) keeps the smallest set
# whose probability reaches $p$ {cite}`holtzman2020curious`, and **min-p** keeps tokens whose
# probability is at least $p_{\min}$ times the top token's {cite}`nguyen2025minp`, so it adapts to how
# confident the model is. We generate 8 continuations of 200 characters with each strategy and measure
# the entropy of the distribution actually sampled from, the diversity of the text (the fraction of
# distinct 5-grams across the 8 samples) and its correctness (the fraction of generated words that
# occur in the training text).

# %%
strategies = {
    "greedy": dict(greedy=True),
    "T = 0.5": dict(temperature=0.5),
    "T = 1.0": dict(temperature=1.0),
    "T = 1.5": dict(temperature=1.5),
    "top-k 5": dict(top_k=5),
    "top-p 0.8": dict(top_p=0.8),
    "min-p 0.1": dict(min_p=0.1),
}
prompts = torch.stack([val_ids[s:s + 32] for s in range(0, 8 * 5000, 5000)])  # (8, 32) prompts


known_words = set(re.findall(r"[a-z]+", corpus.train.lower()))  # every word of the training text


results = {}
for name, options in strategies.items():
    out = generate(target, prompts, 200, generator=torch.Generator().manual_seed(0), **options)
    with torch.no_grad():
        logits = target(out[:, :-1])[:, 31:]  # the distributions the 200 new tokens were drawn from
    sampled_from = torch.zeros(1) if options.get("greedy") else entropy(process_logits(logits.reshape(-1, V),
                                                                                        **options))
    texts = [tokenizer.decode(row[32:]) for row in out]
    results[name] = (sampled_from.mean().item(), distinct_n(texts, 5), real_word_share(texts, known_words), texts[0])
    print(f"{name:10s} entropy {results[name][0]:.2f} nats, distinct 5-grams {results[name][1]:.2f}, "
          f"real words {results[name][2]:.2f}")

# %%
ent = {name: r[0] for name, r in results.items()}
diversity = {name: r[1] for name, r in results.items()}
real = {name: r[2] for name, r in results.items()}
assert ent["greedy"] == 0 < ent["T = 0.5"] < ent["T = 1.0"] < ent["T = 1.5"]  # temperature sharpens or flattens
assert max(ent["top-k 5"], ent["top-p 0.8"], ent["min-p 0.1"]) < ent["T = 1.0"]  # truncation removes the tail
assert diversity["greedy"] < diversity["T = 0.5"] < diversity["T = 1.0"]  # diversity follows entropy
assert real["T = 1.5"] < real["T = 1.0"] < real["min-p 0.1"]  # the tail is where the misspellings live
assert diversity["min-p 0.1"] > 0.9 * diversity["T = 1.0"]  # min-p keeps most of the diversity
for name in ["greedy", "T = 1.0", "T = 1.5", "min-p 0.1"]:
    print(f"--- {name} ---\n{results[name][3]}\n")

# %% [markdown]
# Greedy text falls into loops (low diversity); high temperature drifts into misspellings; truncation
# keeps most of the diversity of $\tau = 1$ while removing the unlikely tail where the errors live.
#
# **Comparing truncation rules fairly.** The strategies above differ in how much they truncate, so they
# also differ in entropy, and a rule that samples from a sharper distribution writes more real words for
# that reason alone. A fair comparison holds the entropy fixed. At each temperature we take nucleus
# sampling with $p = 0.9$ as the anchor, find the $k$ of top-k and the $p_{\min}$ of min-p whose
# truncated distributions have the same mean entropy on 3,584 validation positions
# (`arlib.text.sample_quality.match_entropy`, by bisection), and generate 150 characters after each of
# 32 prompts. Nguyen et al. {cite}`nguyen2025minp` report that min-p keeps text coherent at high
# temperatures where top-p does not, comparing $p_{\min} = 0.1$ with $p = 0.9$; we measure that setting
# too. Differences in the share of real words come with 95 % intervals from a paired bootstrap over the
# 32 prompts.

# %%
sweep_starts = range(2_500, 2_500 + 32 * 4_500, 4_500)
sweep_prompts = torch.stack([val_ids[s:s + 32] for s in sweep_starts])  # (32, 32)
with torch.no_grad():  # the target's distributions on 16 x 224 validation positions, to calibrate on
    calibration = target(torch.stack([val_ids[s:s + 224] for s in range(4_000, 4_000 + 16 * 9_000, 9_000)]))
calibration = calibration.reshape(-1, V)  # (3584, V)


def sample_texts(n_new=150, seed=0, **options):
    out = generate(target, sweep_prompts, n_new, generator=torch.Generator().manual_seed(seed), **options)
    return [tokenizer.decode(row[32:]) for row in out]


def measure(texts):  # quality per prompt (for paired bootstrap intervals), and diversity of the whole set
    return np.array([real_word_share([t], known_words) for t in texts]), distinct_n(texts, 5)


sweep = {}  # (temperature, method) -> (parameter, entropy, real-word share per prompt, distinct 5-grams)
for T in (1.0, 1.5, 2.0):
    goal = truncated_entropy(calibration, "top_p", 0.9, temperature=T)  # anchor: nucleus p = 0.9 at this T
    for method in ("top_k", "top_p", "min_p"):
        value = 0.9 if method == "top_p" else match_entropy(calibration, method, goal, temperature=T)
        sweep[T, method] = (value, truncated_entropy(calibration, method, value, temperature=T),
                            *measure(sample_texts(temperature=T, **{method: value})))
for T in (1.5, 2.0):  # the min-p paper's own settings: p_min = 0.1 against p = 0.9, not matched in entropy
    sweep[T, "min_p 0.1"] = (0.1, truncated_entropy(calibration, "min_p", 0.1, temperature=T),
                             *measure(sample_texts(temperature=T, min_p=0.1)))
print(f"{'T':>4} {'method':>9} {'param':>6} {'entropy':>7} {'real words':>10} {'distinct 5-grams':>16}")
for (T, method), (value, ent_, real_, distinct_) in sweep.items():
    print(f"{T:4.1f} {method:>9} {value:6.3g} {ent_:7.3f} {real_.mean():10.3f} {distinct_:16.3f}")
gap = {}
for T in (1.5, 2.0):
    gap[T, "matched"] = bootstrap_interval(sweep[T, "min_p"][2], sweep[T, "top_p"][2])
    gap[T, "paper"] = bootstrap_interval(sweep[T, "min_p 0.1"][2], sweep[T, "top_p"][2])
    print(f"T = {T}: real-word share, min-p minus top-p: at matched entropy "
          "{:+.3f} [{:+.3f}, {:+.3f}]".format(*gap[T, "matched"]) +
          "; min-p 0.1 vs top-p 0.9 {:+.3f} [{:+.3f}, {:+.3f}]".format(*gap[T, "paper"]))

# %%
for T in (1.5, 2.0):
    assert gap[T, "paper"][1] > 0  # at the paper's settings min-p writes more real words than top-p ...
    assert sweep[T, "min_p 0.1"][1] < sweep[T, "top_p"][1] - 0.1  # ... from a clearly sharper distribution
    assert sweep[T, "min_p 0.1"][3] < sweep[T, "top_p"][3]  # ... and with less diversity
    assert gap[T, "matched"][1] < 0 < gap[T, "matched"][2]  # at matched entropy the gap is within the noise
for method in ("top_k", "top_p", "min_p"):  # for every rule, temperature trades quality for diversity
    assert sweep[1.0, method][2].mean() > sweep[1.5, method][2].mean() > sweep[2.0, method][2].mean()
    assert sweep[1.0, method][3] < sweep[1.5, method][3] < sweep[2.0, method][3]

# %% [markdown]
# At the paper's settings min-p does write clearly more real words than top-p at $\tau = 1.5$ and 2, but
# it also samples from a distribution with a lower entropy, and its text is less diverse: $p_{\min} = 0.1$
# simply truncates harder when the temperature flattens the distribution. Held at the same entropy, the
# three rules are within a few points of each other and min-p's edge over top-p is inside the bootstrap
# interval on our 32 prompts. On this character model, then, the measured benefit of min-p at high
# temperature is mostly that its threshold tightens automatically as the distribution flattens; a
# larger study (more prompts, a word-level model, human judgements as in the paper) would be needed to
# see a smaller effect at equal entropy.
#
# **Beam search and degeneration.** Greedy decoding takes the most likely next token; *beam search*
# keeps the $B$ most likely prefixes at every step and extends each by every token, a better
# approximation to the most likely *continuation* (`arlib.text.beam.beam_search`; full width is
# exhaustive search and width 1 is greedy, both tested). Holtzman et al. {cite}`holtzman2020curious`
# observed that the most likely text is not human-like: it is bland and falls into repetitive loops.
# We decode 150 characters after 8 prompts greedily, with a beam of width 4, and by sampling at
# $\tau = 1$, and compare each with Shakespeare's own continuation: the NLL the target gives the new
# characters, and the fraction of 10-character strings that repeat one earlier in the same text.

# %%
beam_prompts = sweep_prompts[:8]  # (8, 32)
n_beam = 150
decoded = {"greedy": generate(target, beam_prompts, n_beam, greedy=True),
           "beam, width 4": torch.stack([beam_search(target, p, n_beam, width=4)[0][0] for p in beam_prompts]),
           "sampling, T = 1": generate(target, beam_prompts, n_beam, generator=torch.Generator().manual_seed(0)),
           "Shakespeare": torch.stack([val_ids[s:s + 32 + n_beam] for s in list(sweep_starts)[:8]])}
assert torch.equal(decoded["Shakespeare"][:, :32], beam_prompts)
degeneration = {}
for name, out in decoded.items():
    with torch.no_grad():
        logp = torch.log_softmax(target(out[:, :-1]).double(), -1)[:, 31:]  # (8, n_beam, V): the new positions
    nll_new = -logp.gather(-1, out[:, 32:, None]).mean().item()
    texts = [tokenizer.decode(row[32:]) for row in out]
    degeneration[name] = (nll_new, np.mean([repetition(t, 10) for t in texts]), texts[0])
    print(f"{name:16s} NLL under the target {nll_new:.3f} nats/char, repeated 10-grams {degeneration[name][1]:.3f}")

# %%
nll_of = {name: d[0] for name, d in degeneration.items()}
repeated = {name: d[1] for name, d in degeneration.items()}
assert nll_of["beam, width 4"] < nll_of["greedy"]  # the beam finds more likely text than greedy ...
assert min(repeated["greedy"], repeated["beam, width 4"]) > 10 * repeated["Shakespeare"]  # ... that loops
assert abs(nll_of["sampling, T = 1"] - nll_of["Shakespeare"]) < 0.2 < nll_of["Shakespeare"] - nll_of["greedy"]
for name in ("greedy", "beam, width 4"):
    print(f"--- {name} ---\n{degeneration[name][2]}\n")

# %% [markdown]
# The beam finds continuations more likely than greedy's, and both are far more likely than anything
# Shakespeare wrote (about 1.2 nats per character) and repeat themselves many times more: maximizing
# likelihood is the wrong goal for open-ended text. Sampling at $\tau = 1$ matches the likelihood of
# real text and its low repetition, which is why open-ended generation samples, while tasks with one
# right answer (translation, transcription in chapter 5) search.
#
# ## 7. The KV cache
#
# Generating $N$ tokens naively calls the model on the whole prefix at every step, recomputing the
# keys and values of every earlier position: step $t$ processes $t$ positions, $O(t)$ work in the
# projections and MLPs and $O(t^2)$ in attention. But the keys and values of past positions never
# change (the mask stops them from seeing new tokens), so we can store them and feed only the new
# token {cite}`pope2023efficiently`: step $t$ then processes one position, $O(1)$ work in the
# projections and MLPs and $O(t)$ in attention over the cached keys, which at our lengths is small
# next to the rest. `arlib.text.gpt.KVCache` holds them per layer. Below we time every step of greedy
# decoding with and without it, and count the positions the model processes at each step (with a
# hook on its token embedding).

# %%
def timed_decode(model, prompt, n_new, use_cache):
    """Greedy decoding that records the wall time of every step."""
    ids, times = prompt.clone(), []
    cache = model.new_cache(1) if use_cache else None
    with torch.no_grad():
        logits = model(ids, cache=cache)[:, -1] if use_cache else None
        for _ in range(n_new):
            t0 = time.perf_counter()
            if not use_cache:
                logits = model(ids)[:, -1]  # recompute the whole prefix
            token = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            if use_cache:
                logits = model(token, cache=cache)[:, -1]  # only the new token
            times.append(time.perf_counter() - t0)
    return ids, np.array(times)


prompt = val_ids[:16][None]
n_new = 200
processed = []  # positions fed to the model by each call
hook = target.wte.register_forward_hook(lambda module, inputs, output: processed.append(inputs[0].shape[1]))
ids_cache, t_cache = timed_decode(target, prompt, n_new, use_cache=True)
work_cache, processed = processed[1:], []  # skip the prefill of the 16-token prompt
ids_plain, t_plain = timed_decode(target, prompt, n_new, use_cache=False)
work_plain = processed
hook.remove()
assert torch.equal(ids_cache, ids_plain)  # identical tokens
assert torch.equal(ids_cache, generate(target, prompt, n_new, greedy=True))  # and arlib.generate agrees
assert work_cache == [1] * n_new  # with the cache: one position per step ...
assert work_plain == list(range(16, 16 + n_new))  # ... without it: the whole, growing prefix
quarter = n_new // 4
growth_plain = np.median(t_plain[-quarter:]) / np.median(t_plain[:quarter])
growth_cache = np.median(t_cache[-quarter:]) / np.median(t_cache[:quarter])
print(f"{n_new} tokens: {sum(work_plain):,} positions processed and {t_plain.sum():.2f} s without the cache, "
      f"{sum(work_cache)} positions and {t_cache.sum():.2f} s with it")
print(f"time per step, last quarter / first quarter: {growth_plain:.1f}x without, {growth_cache:.1f}x with the cache")
fig, ax = plt.subplots()
positions = np.arange(16, 16 + n_new)
ax.plot(positions, 1e3 * t_plain, label="no cache: recompute the prefix")
ax.plot(positions, 1e3 * t_cache, label="KV cache: one new token")
ax.set_xlabel("position of the generated token")
ax.set_ylabel("ms per token")
ax.legend()
arlib.export_figure(fig, "kv-cache-step-time")  # into figures/ when `make execute` runs
plt.show()

# %% [markdown]
# **The cache in memory.** Caching keys and values is how Transformer decoders have always been run
# incrementally: Shazeer {cite}`shazeer2019fast` analyses that incremental decoding and GPT-2's released
# code passes the cache between calls as `past` {cite}`radford2019language`. The cache holds a key and a
# value vector per layer, per key/value head and per token, so it takes $2 L H_{kv} d_h b$ bytes per token
# ($b$ bytes per number). With $H_{kv} = H$ (multi-head attention) that is $2 L d\, b$: small for our
# models, but for a 7B-parameter model it is half a megabyte per token and 2 GiB for one 4,096-token
# sequence. *Multi-query* attention {cite}`shazeer2019fast` shares one key/value head among all query
# heads and *grouped-query* attention {cite}`ainslie2023gqa` one per group of query heads, dividing the
# cache by $H / H_{kv}$ (`GPTConfig(n_kv_head=...)` in `arlib`; tested to equal multi-head attention with
# keys and values copied across each group). A decoding step with batch $B$ reads all the weights once
# and every sequence's cache; when the step is limited by memory bandwidth, as decoding at small batch is
# {cite}`pope2023efficiently`, the cache's share of the bytes read estimates its share of the step's
# time. The table computes these sizes in 16-bit numbers; the 7B rows use the attention shapes of
# Llama-2-7B (multi-head) and Mistral-7B (8 key/value heads), with parameters counted as a GPT-2-style
# model of that shape ($12 L d^2 + V d$).

# %%
book_7b = dict(vocab_size=32_000, block_size=4096, n_layer=32, n_head=32, n_embd=4096)
memory_rows = {"draft (this book)": (draft.config, draft.num_params()),
               "target (this book)": (cfg, target.num_params())}
for label, kv in (("7B, multi-head", None), ("7B, GQA, 8 KV heads", 8), ("7B, multi-query", 1)):
    config_7b = GPTConfig(**book_7b, n_kv_head=kv)
    memory_rows[label] = (config_7b, 12 * config_7b.n_layer * config_7b.n_embd ** 2 + config_7b.vocab_size * config_7b.n_embd)
print(f"{'model':22s} {'KV heads':>8s} {'per token':>10s} {'per sequence':>12s} | cache share of bytes read per step "
      f"at full context: batch 1, 16")
cache_share = {}
for label, (config_m, n_params) in memory_rows.items():
    size = kv_cache_bytes(config_m, bytes_per_value=2)
    weights = 2 * n_params
    cache_share[label] = [B * size["per_sequence"] / (weights + B * size["per_sequence"]) for B in (1, 16)]
    print(f"{label:22s} {config_m.kv_heads:8d} {size['per_token'] / 2**10:8.1f} KiB {size['per_sequence'] / 2**20:9.1f} MiB"
          f" | {cache_share[label][0]:.0%}, {cache_share[label][1]:.0%}")

# the formula is the size of arlib's actual cache tensors (float32 here: 4 bytes)
for n_kv in (None, 2, 1):
    small = GPTConfig(vocab_size=V, block_size=64, n_layer=2, n_head=4, n_embd=32, n_kv_head=n_kv)
    cache = GPT(small).new_cache(1)
    assert cache.k.numel() * 4 + cache.v.numel() * 4 == kv_cache_bytes(small, bytes_per_value=4)["per_sequence"]
mha_7b = kv_cache_bytes(memory_rows["7B, multi-head"][0])
assert mha_7b["per_token"] == 2**19 and mha_7b["per_sequence"] == 2 * 2**30  # 0.5 MiB per token, 2 GiB per sequence
assert kv_cache_bytes(memory_rows["7B, GQA, 8 KV heads"][0])["per_token"] * 4 == mha_7b["per_token"]
assert kv_cache_bytes(memory_rows["7B, multi-query"][0])["per_token"] * 32 == mha_7b["per_token"]
assert cache_share["7B, multi-head"][1] > 0.5 > cache_share["7B, GQA, 8 KV heads"][1]  # at batch 16 GQA halves the bill

# %% [markdown]
# For one sequence the 7B model's cache is a small part of what a step reads, but at batch 16 and full
# context the multi-head cache outweighs the weights, and the step's time, if memory-bound, is mostly
# spent reading it. Grouped-query attention with 8 key/value heads cuts the cache four-fold and brings its
# share back under half; multi-query attention cuts it 32-fold. Ainslie et al. show that the quality lost
# by sharing is small with 8 groups and larger with one, which is why GQA became the common choice.

# %% [markdown]
# **The same model in Hugging Face.** `arlib`'s GPT uses GPT-2's layout and parameter names, so
# `arlib.text.hf.to_hf` copies its weights into a `transformers` `GPT2LMHeadModel`, which can be saved with
# `save_pretrained` and used by any tool of that ecosystem. We save the target to a temporary folder, load
# it back with `from_pretrained` from that folder only (`arlib.text.hf.load_hf_folder`: nothing is
# downloaded) and check that Hugging Face's own `generate`, with its own KV cache, writes the same greedy
# continuation as `arlib`.

# %%
hf_logging.disable_progress_bar()
with tempfile.TemporaryDirectory() as folder:
    to_hf(target).save_pretrained(folder)
    hf_target = load_hf_folder(folder)  # from_pretrained on that local folder only
hf_prompt = tokenizer.encode("KING HENRY:\nWhat ")[None]  # (1, 17)
ours = generate(target, hf_prompt, 100, greedy=True)
theirs = hf_target.generate(hf_prompt, attention_mask=torch.ones_like(hf_prompt), max_new_tokens=100,
                            do_sample=False, pad_token_id=0)
assert torch.equal(ours, theirs)  # the same 100 greedy characters
print(f"Hugging Face generate == arlib generate on 100 greedy characters:\n{tokenizer.decode(theirs[0])}")

# %% [markdown]
# ## 8. What a next-token predictor knows, and what it does not
#
# **Looking ahead.** The model is trained only to predict $x_{t+1}$, but to do that well its hidden
# state at $t$ must carry information about what comes later (the rest of a word, the end of a line).
# We fit linear *probes* from the target's hidden state at $t$, after each layer, to the character at
# $t+1$, $t+2$ and $t+3$: ridge regressions onto one-hot targets, solved in closed form, whose argmax
# is the prediction. They are fitted on 80 % of 23 040 validation positions and scored by accuracy on
# the rest, against two baselines: always guessing the most frequent character (a space), and the best
# guess from the *current* character alone ($x_t \to x_{t+k}$ counted on the training text). Beating the
# second baseline means the state knows more about the future than the last character does. This is
# the information that the extra decoding heads of Medusa-style drafters {cite}`cai2024medusa` and
# blockwise parallel decoding {cite}`stern2018blockwise` exploit in chapter 2.

# %%
starts = torch.arange(120) * 4_000 + 1_000  # 120 windows spread over the validation text
windows = torch.stack([val_ids[s:s + cfg.block_size + 3] for s in starts])  # (120, 259)
with torch.no_grad():
    logits, hidden = target(windows[:, :cfg.block_size], return_hidden=True)  # hidden: n_layer + 1 x (120, 256, d)
positions = torch.arange(64, cfg.block_size)  # skip the first 64 positions (short context)
N = len(starts) * len(positions)
perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
fit_rows, test_rows = perm[: int(0.8 * N)], perm[int(0.8 * N):]
current = windows[:, positions].reshape(-1)  # x_t at every probed position


def ridge_probe_accuracy(features, labels, lam=1.0):
    """Least squares from [features, 1] to one-hot labels on fit_rows (+ lam * I); accuracy on test_rows."""
    X = torch.cat([features, torch.ones(len(features), 1)], dim=1).double()  # (N, d + 1)
    Y = F.one_hot(labels, V).double()  # (N, V)
    A = X[fit_rows].T @ X[fit_rows] + lam * torch.eye(X.shape[1], dtype=torch.float64)
    W = torch.linalg.solve(A, X[fit_rows].T @ Y[fit_rows])  # (d + 1, V)
    return ((X[test_rows] @ W).argmax(dim=1) == labels[test_rows]).double().mean().item()


probe, baseline = {}, {}
for k in (1, 2, 3):
    labels = windows[:, positions + k].reshape(-1)  # the character k steps ahead
    for layer in range(cfg.n_layer + 1):
        probe[k, layer] = ridge_probe_accuracy(hidden[layer][:, positions].reshape(-1, cfg.n_embd), labels)
    skip = torch.zeros(V, V).index_put_((train_ids[:-k], train_ids[k:]), torch.ones(len(train_ids) - k),
                                        accumulate=True)  # skip[a, b] = #(a, then b k steps later)
    baseline[k, "current char"] = (skip.argmax(1)[current[test_rows]] == labels[test_rows]).double().mean().item()
    baseline[k, "most frequent"] = (labels[test_rows] == torch.bincount(train_ids).argmax()).double().mean().item()
own = (logits[:, positions].argmax(-1).reshape(-1)[test_rows] == windows[:, positions + 1].reshape(-1)[test_rows])
print(f"the model's own next-character accuracy on these positions: {own.double().mean():.3f}")
for k in (1, 2, 3):
    print(f"x(t+{k}): probe accuracy by layer {[round(probe[k, l], 3) for l in range(cfg.n_layer + 1)]}; "
          f"from the current char {baseline[k, 'current char']:.3f}, most frequent {baseline[k, 'most frequent']:.3f}")

# %%
last = cfg.n_layer
assert probe[1, last] > probe[2, last] > probe[3, last]  # the further ahead, the less the state knows ...
for k in (2, 3):  # ... but it knows more than the current character tells
    assert max(probe[k, l] for l in range(last + 1)) > baseline[k, "current char"] + 0.01
assert probe[2, last] > probe[2, 0] + 0.03  # and the knowledge is built up by the layers
fig, ax = plt.subplots()
for k in (1, 2, 3):
    ax.plot(range(last + 1), [probe[k, l] for l in range(last + 1)], marker="o", label=f"x(t+{k})")
    ax.axhline(baseline[k, "current char"], color=f"C{k - 1}", ls=":", lw=1)
ax.set_xlabel("layer (0 = embeddings)")
ax.set_ylabel("probe accuracy (dotted: from x(t) alone)")
ax.legend()
arlib.export_figure(fig, "future-token-probe")  # into figures/ when `make execute` runs
plt.show()

# %% [markdown]
# **Beyond the next-token distribution.** These probes beat the current character, but that is a weak
# baseline: a state that predicts $x_{t+1}$ well also predicts $x_{t+2}$ somewhat *through* $x_{t+1}$ (after
# "th", an "e" is likely next and a space after that). The question worth asking is whether the state knows
# more about $x_{t+2}$ than the model's own next-token distribution $p(x_{t+1} \mid x_{\le t})$ does: an
# *information surplus* in the sense of Zhang {cite}`zhang2025markov`, who uses it to explain why drafting
# several tokens from one hidden state works. We fit multinomial logistic regressions (softmax regression,
# L-BFGS, the L2 weight chosen on a fifth of the fitting rows along a warm-started path) from four feature
# sets: the hidden state $h_t$ after the last layer (and after the best layer on the fitting rows, if that
# differs); the model's own distribution, as log-probabilities *and* probabilities (a mixture
# $\sum_c p(c)\, q(x_{t+2} \mid c)$ is linear in the probabilities, not in their logarithms); the same
# plus the current character; and all of it plus $h_t$. All probes see the same 9,216 fitting positions (half
# of the fitting rows, to keep this cell short) and are scored on the same 4,608 test positions by
# accuracy and cross-entropy. Intervals are 95 % bootstrap intervals over the 120 windows (positions in a
# window share their text, so they are resampled together), for each probe and for paired differences.

# %%
def scaled(x, rows, per_column=True):
    """Center on `rows`; divide by each column's spread, or (per_column=False) by the block's RMS. The
    latter is for one-hots and probabilities: a rare column divided by its own tiny spread would get values
    near 100 on the few rows where it fires, and one such test row can dominate a probe's cross-entropy."""
    x = x.float() - x[rows].float().mean(0)
    return x / (x[rows].std(0).clamp_min(1e-6) if per_column else x[rows].pow(2).mean().sqrt())


def softmax_probe(x, labels, rows, test, l2_path=(3e-2, 1e-2, 3e-3), path_iter=30, refit_iter=80):
    """Softmax regression from already scaled features x (N, d) to labels on `rows`, scored on `test`.
    The L2 weight is chosen on the last fifth of `rows`, walking `l2_path` from strong to weak with each fit
    warm-started from the previous one (a regularization path); the chosen fit is then refined on all of
    `rows`. Returns per-test-row cross-entropy (nats) and correctness, and the chosen weight."""
    X = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # (N, d + 1); the bias column is not penalized

    def fit(r, l2, W, iters):
        W = W.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([W], max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-6, tolerance_change=1e-10)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(X[r] @ W, labels[r]) + l2 * W[:-1].pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return W.detach()

    inner, held = rows[: int(0.8 * len(rows))], rows[int(0.8 * len(rows)):]
    W, best = torch.zeros(X.shape[1], V), None
    for l2 in l2_path:
        W = fit(inner, l2, W, path_iter)
        score = F.cross_entropy(X[held] @ W, labels[held]).item()
        if best is None or score < best[0]:
            best = (score, l2, W)
    W = fit(rows, best[1], best[2], refit_iter)
    logits_test = X[test] @ W
    return {"nll_rows": F.cross_entropy(logits_test, labels[test], reduction="none").double(),
            "correct_rows": (logits_test.argmax(1) == labels[test]).double(), "l2": best[1]}


def window_bootstrap(values, groups, draws=2000, seed=0):
    """Mean of `values` over test positions and a 95 % percentile interval, resampling whole windows
    (`groups`) with replacement and pooling their positions (a cluster bootstrap)."""
    ids, inverse = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, values.double())
    counts = torch.bincount(inverse, minlength=len(ids)).double()
    picks = torch.randint(0, len(ids), (draws, len(ids)), generator=torch.Generator().manual_seed(seed))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return values.double().mean().item(), lo, hi


t_probe = time.perf_counter()
probe_rows = fit_rows[: len(fit_rows) // 2]
window_of = torch.arange(N) // len(positions)  # the window each probed position comes from
inner_rows, held_rows = probe_rows[: int(0.8 * len(probe_rows))], probe_rows[int(0.8 * len(probe_rows)):]
best_layer = {}
for k in (2, 3):  # the best layer for x(t+k), by a ridge probe's held-out accuracy within the fitting rows
    labels = windows[:, positions + k].reshape(-1)
    Y = F.one_hot(labels, V).double()
    scores = []
    for layer in range(cfg.n_layer + 1):
        X = torch.cat([hidden[layer][:, positions].reshape(-1, cfg.n_embd), torch.ones(N, 1)], 1).double()
        W = torch.linalg.solve(X[inner_rows].T @ X[inner_rows] + torch.eye(X.shape[1], dtype=torch.float64),
                               X[inner_rows].T @ Y[inner_rows])
        scores.append(((X[held_rows] @ W).argmax(1) == labels[held_rows]).double().mean().item())
    best_layer[k] = int(np.argmax(scores))
with torch.no_grad():
    own_logp = torch.log_softmax(logits[:, positions].double(), dim=-1).reshape(-1, V)  # (N, V)
own_features = torch.cat([scaled(own_logp, probe_rows), scaled(own_logp.exp(), probe_rows, per_column=False)], 1)
current_onehot = scaled(F.one_hot(current, V), probe_rows, per_column=False)
state = {layer: scaled(hidden[layer][:, positions].reshape(-1, cfg.n_embd), probe_rows)
         for layer in {last, *best_layer.values()}}
groups = window_of[test_rows]
lookahead = {}
for k in (2, 3):
    labels = windows[:, positions + k].reshape(-1)
    feature_sets = {"own distribution": own_features,
                    "own distribution + x(t)": torch.cat([own_features, current_onehot], 1),
                    "hidden state, last layer": state[last],
                    "own distribution + x(t) + hidden state": torch.cat([own_features, current_onehot, state[last]], 1)}
    if best_layer[k] != last:
        feature_sets[f"hidden state, layer {best_layer[k]}"] = state[best_layer[k]]
    fits = {name: softmax_probe(x, labels, probe_rows, test_rows) for name, x in feature_sets.items()}
    lookahead[k] = {name: {"nll": window_bootstrap(f["nll_rows"], groups),
                           "accuracy": window_bootstrap(f["correct_rows"], groups), **f} for name, f in fits.items()}
    print(f"x(t+{k}) (best hidden layer on the fitting rows: {best_layer[k]} of {last})")
    for name, r in lookahead[k].items():
        print("  {:40s} accuracy {:.3f} [{:.3f}, {:.3f}]".format(name, *r["accuracy"]),
              " cross-entropy {:.3f} [{:.3f}, {:.3f}] nats".format(*r["nll"]), f" (L2 {r['l2']:g})")


def paired(k, a, b, key="nll_rows"):
    """Probe a's per-position loss (or correctness) minus probe b's, with its window-bootstrap interval."""
    return window_bootstrap(lookahead[k][a][key] - lookahead[k][b][key], groups)


for k in (2, 3):
    print(f"x(t+{k}):",
          "hidden state minus own distribution {:+.3f} nats [{:+.3f}, {:+.3f}];".format(
              *paired(k, "hidden state, last layer", "own distribution")),
          "surplus of the hidden state over own distribution + x(t): {:+.3f} nats [{:+.3f}, {:+.3f}],".format(
              *paired(k, "own distribution + x(t)", "own distribution + x(t) + hidden state")),
          "accuracy {:+.3f} [{:+.3f}, {:+.3f}]".format(*paired(k, "own distribution + x(t) + hidden state",
                                                                "own distribution + x(t)", "correct_rows")))
print(f"probes fitted in {time.perf_counter() - t_probe:.1f} s")

# %%
for k in (2, 3):
    surplus_nats = paired(k, "own distribution + x(t)", "own distribution + x(t) + hidden state")
    assert surplus_nats[1] > 0 and surplus_nats[0] < 0.1  # h_t adds a few hundredths of a nat, interval above 0
    surplus_acc = paired(k, "own distribution + x(t) + hidden state", "own distribution + x(t)", "correct_rows")
    assert surplus_acc[0] < 0.03  # in accuracy, at most a couple of points
    assert best_layer[k] >= last - 1  # the ridge read-out on the fitting rows picks one of the last two layers ...
    if best_layer[k] != last:  # ... and where it picks the second last, its logistic probe is worse than the last's
        nll_best, nll_last = (lookahead[k][name]["nll"][0] for name in (f"hidden state, layer {best_layer[k]}",
                                                                          "hidden state, last layer"))
        assert nll_best > nll_last
assert paired(2, "hidden state, last layer", "own distribution")[1] > 0  # at t+2 the distribution alone wins ...
assert abs(paired(3, "hidden state, last layer", "own distribution")[0]) < 0.03  # ... at t+3 it is about a tie

# %% [markdown]
# Three things come out. First, read on its own, the hidden state is *not* a better predictor of $x_{t+2}$
# than the model's own next-token distribution: the distribution's probe has the lower cross-entropy, and
# three characters ahead the two are level. A linear read-out of $h_t$ cannot easily form the mixture
# $\sum_c p(c)\, q(\cdot \mid c)$, which needs the softmax the model applies on top of $h_t$. So comparing
# two separately fitted probes says more about the probes than about what $h_t$ knows. Second, the fair
# test nests one probe in the other. Adding $h_t$ to the own distribution and the current character lowers
# the held-out cross-entropy at both distances, with intervals above zero: the state carries information
# about $x_{t+2}$ and $x_{t+3}$ that its own next-token distribution does not. The surplus is a few
# hundredths of a nat (in accuracy, about a point, not always clear of zero), and it is a lower bound: a
# linear probe on half the fitting rows finds only part of what is there. Third, the layer that reads the
# future best is a late one: a ridge read-out on the fitting rows picks the last layer or the one before,
# and where it picks the one before, the logistic probe from it does worse than from the last layer.
#
# Nothing in the loss asks position $t$ to predict $x_{t+2}$, so why is it there? Two explanations fit.
# Later positions read $h_t$ through attention, so the losses at $x_{t+2}, x_{t+3}, \dots$ send gradients
# into $h_t$, which can learn to carry what they need; Wu et al. {cite}`wu2024plan` call this
# *pre-caching*. Or the features that $h_t$ computes for $x_{t+1}$ (which word we are in, how far into
# the line) are useful later anyway; Wu et al. call these *breadcrumbs*. They separate the two by
# *myopic* training, which cuts the gradient from later losses into earlier positions. In natural
# language, for GPT-2-sized models, they find mostly breadcrumbs, with pre-caching growing with scale. A
# probe cannot tell the two apart; it only shows that the information is there. Pal et al.
# {cite}`pal2023future` decode tokens several steps ahead from a single hidden state of GPT-J. The surplus is
# what Medusa's and Hydra's extra heads {cite}`cai2024medusa,ankner2024hydra` and blockwise parallel
# decoding {cite}`stern2018blockwise` exploit in chapter 2.

# %% [markdown]
# **The reversal curse.** The chain rule says a left-to-right model *can* represent any joint
# distribution; it does not say what it will *learn*. Berglund et al. {cite}`berglund2024reversal`
# found that a model trained on "A is B" does not infer "B is A". We reproduce it in miniature: a small
# GPT learns 24 invented facts "*person* is the king of *land*." Twelve of them (group A) appear only
# in that direction; the other twelve (group B) also appear reversed, "the king of *land* is
# *person*.", so the model learns the reversed phrasing too. We then rank, for each fact, the candidate
# names by the probability the model gives them after each prompt.

# %%
rng = np.random.default_rng(0)
syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
names = []
while len(names) < 48:
    name = "".join(rng.choice(syllables, 2))
    if name not in names:
        names.append(name)
people, lands = names[:24], names[24:]
group_a, group_b = list(zip(people[:12], lands[:12])), list(zip(people[12:], lands[12:]))
forward = lambda person, land: f"{person} is the king of {land}."
reverse = lambda person, land: f"the king of {land} is {person}."
statements = [forward(p, l) for p, l in group_a + group_b] + [reverse(p, l) for p, l in group_b]
fact_tok = CharTokenizer.from_text("\n".join(statements))


def fact_batches(step, g, batch=16, T=64):
    """Windows of a random stream of statements, starting at a random offset (positions vary)."""
    rows = []
    for _ in range(batch):
        text = ""
        while len(text) < T + 31:
            text += statements[torch.randint(len(statements), (1,), generator=g).item()] + "\n"
        offset = torch.randint(0, 30, (1,), generator=g).item()
        rows.append(fact_tok.encode(text[offset:offset + T + 1]))
    rows = torch.stack(rows)
    return rows[:, :-1], rows[:, 1:]


arlib.seed_everything(0)
fact_model = GPT(GPTConfig(vocab_size=fact_tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=128))
t0 = time.perf_counter()
fact_history = train(fact_model, next_token_loss, fact_batches, TrainConfig(steps=400, lr=3e-3, warmup=30,
                                                                              progress=False))
print(f"trained on {len(statements)} statements in {time.perf_counter() - t0:.1f} s, "
      f"final loss {np.mean(fact_history['loss'][-20:]):.3f}")


def candidate_log_probs(prompt, candidates):
    """log p(candidate + "." | prompt) for each of K equally long candidates, in one batched forward pass."""
    ids = torch.stack([fact_tok.encode("\n" + prompt + c + ".") for c in candidates])  # (K, L)
    with torch.no_grad():
        logp = torch.log_softmax(fact_model(ids[:, :-1]), dim=-1)  # (K, L - 1, V): row i predicts token i + 1
    n = len(candidates[0]) + 1  # the candidate's characters and the full stop
    return logp[:, -n:].gather(-1, ids[:, -n:, None]).squeeze(-1).sum(dim=-1)  # (K,)


def rank_of_truth(facts, direction, pool):
    """For each fact, the rank (1 = best) of the true answer among the candidates in `pool`."""
    ranks = []
    for person, land in facts:
        prompt, truth = ((f"{person} is the king of ", land) if direction == "forward"
                         else (f"the king of {land} is ", person))
        scores = candidate_log_probs(prompt, pool)
        ranks.append(1 + (scores > scores[pool.index(truth)]).sum().item())
    return np.array(ranks)


group_a_people = [p for p, _ in group_a]
reversal = {
    ("A", "forward"): rank_of_truth(group_a, "forward", lands),
    ("B", "forward"): rank_of_truth(group_b, "forward", lands),
    ("B", "reverse"): rank_of_truth(group_b, "reverse", people),
    ("A", "reverse"): rank_of_truth(group_a, "reverse", people),
    ("A", "reverse, among group A"): rank_of_truth(group_a, "reverse", group_a_people),
}
for (g, d), ranks in reversal.items():
    pool = 12 if "among" in d else 24
    print(f"group {g} ({'seen in both directions' if g == 'B' else 'seen forward only'}), {d}: "
          f"accuracy {np.mean(ranks == 1):.2f} (chance {1 / pool:.2f}), mean rank {ranks.mean():.1f} of {pool}")

# %%
for key in [("A", "forward"), ("B", "forward"), ("B", "reverse")]:
    assert np.mean(reversal[key] == 1) >= 0.9  # facts in the direction they were read: known
unseen = reversal["A", "reverse, among group A"]
assert np.mean(unseen == 1) <= 0.25 and unseen.mean() > 4  # reversed group-A facts: near chance (rank 6.5)

# %% [markdown]
# The model knows every fact in the direction it read it, and knows the reversed phrasing (group B),
# yet for group A it cannot name the king of a land. Among all 24 names it favours group-B people (the
# only ones it has ever seen after "the king of ... is"), and even among the 12 group-A people its
# choice is no better than chance: the association was stored in one direction only.
# A left-to-right factorization predicts the *person* before it sees the *land* in every group-A
# sentence, so nothing in its training signal ever asked it to map lands to people.
#
# ## Exercises
#
# **Exercise 1.1** (perplexity; easy). Write `perplexity(log_probs)` that takes the natural-log
# probabilities a model gave to each held-out token (a 1-D tensor) and returns the perplexity
# {eq}`eq-nll` as a float. What is the perplexity of a model that guesses uniformly among 84
# characters?

# %%
def perplexity(log_probs):
    ### BEGIN SOLUTION
    return math.exp(-log_probs.double().mean().item())
    ### END SOLUTION


# %%
arlib.checks.perplexity(perplexity)

# %% [markdown]
# **Exercise 1.2** (top-p filtering; medium). Write `top_p_filter(logits, p)` for a batch of logits
# `(B, V)`: keep, in each row, the smallest set of most likely tokens whose total probability is at
# least `p` (always at least the top token) and set every other logit to `-inf`. Do it without a
# Python loop over rows or tokens (hint: `torch.sort`, `cumsum`, `scatter`).

# %%
def top_p_filter(logits, p):
    ### BEGIN SOLUTION
    if p >= 1:  # keep everything (a float32 cumsum can reach 1.0 before the last token)
        return logits
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = mass_before >= p  # the set already reached p without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
    ### END SOLUTION


# %%
arlib.checks.top_p_filter(top_p_filter)

# %% [markdown]
# **Exercise 1.3** (attention with a KV cache; medium). Write one decoding step of causal attention
# with a cache: `cached_attention(q, k_new, v_new, k_cache, v_cache)` gets the new token's query, key
# and value `(B, H, 1, D)` and the cached keys and values `(B, H, T, D)` (possibly with `T = 0`), and
# returns `(out, k_all, v_all)`: the attention output `(B, H, 1, D)` and the caches grown by one.
# Why does the newest query need no causal mask?

# %%
def cached_attention(q, k_new, v_new, k_cache, v_cache):
    ### BEGIN SOLUTION
    k_all = torch.cat([k_cache, k_new], dim=2)
    v_all = torch.cat([v_cache, v_new], dim=2)
    weights = torch.softmax(q @ k_all.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v_all, k_all, v_all
    ### END SOLUTION


# %%
arlib.checks.cached_attention(cached_attention)

# %% [markdown]
# **Exercise 1.4** (scoring a continuation; medium). The reversal-curse probe ranks candidates by
# $\log p(\text{continuation} \mid \text{prompt})$. Write `continuation_log_prob(model, prompt_ids,
# continuation_ids)` (1-D token tensors, an `arlib` GPT) that computes it with a *single* forward pass
# (teacher forcing), as a float. (The reversal-curse code above scores many candidates at once; here
# write the single-sequence version.)

# %%
def continuation_log_prob(model, prompt_ids, continuation_ids):
    ### BEGIN SOLUTION
    ids = torch.cat([prompt_ids, continuation_ids])[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]), dim=-1)[0]  # row i predicts token i + 1
    n = len(continuation_ids)
    return logp[-n:].gather(-1, continuation_ids[:, None]).sum().item()
    ### END SOLUTION


# %%
arlib.checks.continuation_log_prob(continuation_log_prob)

# %% [markdown]
# **Exercise 1.5** (KL divergence; easy). Write `kl_divergence(p, q)` for two probability vectors over
# the same outcomes, in nats, following {eq}`eq-ce-kl`. Make sure outcomes with $p(x) = 0$ contribute
# nothing, and that $q(x) = 0 < p(x)$ gives infinity.

# %%
def kl_divergence(p, q):
    ### BEGIN SOLUTION
    support = p > 0
    return (p[support] * (p[support].log() - q[support].log())).sum().item()
    ### END SOLUTION


# %%
arlib.checks.kl_divergence(kl_divergence)

# %% [markdown]
# **Exercise 1.6** (a Kneser–Ney bigram model; hard). Build the interpolated Kneser–Ney bigram table
# {eq}`eq-kneser-ney` from a matrix of bigram counts `counts[h, w]` (`(V, V)`, float) and a discount
# `D`, as a `(V, V)` tensor whose row `h` is $p(\cdot \mid h)$. The lower-order model is itself
# smoothed towards the uniform distribution:
# $p_{\mathrm{uni}}(w) = \big(\max(N(w) - D, 0) + D\,T/V\big) / \sum_{w'} N(w')$, where $N(w)$ is the
# number of *distinct* characters seen before $w$ and $T$ the number of characters with $N(w) > 0$.
# Then $p(w \mid h) = \big(\max(c(hw) - D, 0) + D\,T(h)\,p_{\mathrm{uni}}(w)\big) / c(h)$ with $T(h)$ the
# number of distinct characters seen after $h$, and $p(w \mid h) = p_{\mathrm{uni}}(w)$ for a context
# never seen. No loops: use comparisons, sums and broadcasting. Why does every row sum to 1?

# %%
def kneser_ney_bigram(counts, D):
    ### BEGIN SOLUTION
    counts = counts.double()
    V = counts.shape[0]
    preceders = (counts > 0).sum(dim=0).double()  # N(w): distinct characters seen before w
    T = (preceders > 0).sum()
    p_uni = (torch.clamp(preceders - D, min=0) + D * T / V) / preceders.sum()  # (V,)
    c_h = counts.sum(dim=1, keepdim=True)  # (V, 1)
    T_h = (counts > 0).sum(dim=1, keepdim=True)  # distinct followers of each context
    p = (torch.clamp(counts - D, min=0) + D * T_h * p_uni) / c_h.clamp_min(1)
    return torch.where(c_h > 0, p, p_uni.expand_as(p))
    ### END SOLUTION


# %%
arlib.checks.kneser_ney_bigram(kneser_ney_bigram)

# %% [markdown]
# ## Summary
#
# - The chain rule {eq}`eq-chain-rule` factorizes any joint distribution, in any order; an AR model
#   learns the conditionals of one order.
# - Maximum likelihood minimizes cross-entropy, which is the KL divergence to the data plus a
#   constant {eq}`eq-ce-kl`; held-out NLL, perplexity and bits per character measure it.
# - A GPT is embeddings, a residual stream of pre-LayerNorm attention and MLP blocks, and a tied
#   output map; teacher forcing trains all positions in one pass.
# - Decoding strategies trade entropy for reliability; the KV cache makes each step process one new
#   position instead of the whole prefix.
# - Hidden states carry information about several tokens ahead (which chapter 2's drafters use), but
#   facts learned in one direction are not available in the other.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```
