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
# # Non-autoregressive speech recognition: CTC, Paraformer, and the speed/accuracy trade
#
# Speech recognition maps a waveform to a transcript. An *autoregressive* recognizer writes the
# transcript one token at a time, each conditioned on the audio and on the tokens before it, exactly
# like chapter 1's GPT with an extra input: $p(y \mid x) = \prod_u p(y_u \mid y_{<u}, x)$. That is
# accurate and slow: one decoder call per character. A *non-autoregressive* recognizer predicts all
# tokens at once. CTC {cite}`graves2006connectionist` does it by labelling every audio frame and
# collapsing the labels; Paraformer {cite}`gao2022paraformer` first counts and locates the tokens with a
# continuous integrate-and-fire predictor, then decodes them all in one pass; CASS-NAT
# {cite}`fan2021cassnat` finds the tokens' frames with a CTC alignment. This chapter builds all of them
# on one acoustic encoder and measures what the speed costs in accuracy.
#
# **You will learn**
# - speech features from scratch: the short-time Fourier transform, mel filters, log-mel frames, and
#   SpecAugment's masks {cite}`park2019specaugment`;
# - an attention encoder-decoder (LAS {cite}`chan2016listen`; with Transformer layers {cite}`vaswani2017attention`,
#   Speech-Transformer {cite}`dong2018speech`) with greedy and beam search, and what
#   its real-time factor is made of;
# - CTC: the loss by the forward algorithm in log space (equal to PyTorch's in value, and in gradient
#   through the log-softmax),
#   greedy and prefix beam search decoding, and CTC's blank-dominated, spiky posteriors;
# - Paraformer: continuous integrate-and-fire, the quantity loss, the parallel decoder and the
#   glancing sampler, with an ablation of each part;
# - CASS-NAT's Viterbi alignment of a transcript to the frames;
# - where the time of an encoder-decoder goes: padding in batches, and depth in the decoder versus the
#   encoder.
#
# **The data** are speech synthesized offline by `espeak-ng`: sequences of 1 to 8 words from a
# 40-word vocabulary (digits, numbers, commands) spoken by 256 voices (espeak-ng's accents combined
# with voice variants) at random speeds and pitches. The 64 test voices use variants never heard in
# training, so every number below measures generalization to unseen synthetic voices.
#
# **The models** share one acoustic encoder (two convolutions that halve the frame rate to 50 frames a
# second, then six transformer layers of width 64), trained with CTC by `python -m arlib.recipes
# speech-ctc`. The autoregressive decoder (`speech-aed`) and the two Paraformer decoders
# (`speech-paraformer`, `speech-paraformer-noglance`) were trained on top of the *frozen* encoder. Real
# systems train each model end to end; sharing the encoder keeps the book's checkpoints small and makes
# every comparison below a comparison of decoders that hear exactly the same representation.

# %% [markdown]
# ![Three decoders on one encoder](../../figures/diagrams/05-speech-decoders.svg)
#
# *Figure.* CTC labels every frame and collapses; Paraformer counts and places tokens with CIF, then decodes them in one pass; the attention decoder writes one token at a time.

# %%
import math
import statistics
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import arlib
import arlib.checks
from arlib.speech.models import EOS, AttentionDecoder, TranscriptVocab, speech_features
from arlib.speech.audio import log_mel, mel_filterbank, spec_augment
from arlib.speech.ctc import ctc_forward, greedy_decode, prefix_beam_search, token_segments, viterbi_align
from arlib.data import TEST_VOICES, TRAIN_VOICES, spoken_utterances
from arlib.env import check_timing
from arlib.speech.error_rates import (char_error_rate, edit_distance, wer_difference, wer_interval,
                                      word_error_counts, word_error_rate)
from arlib.speech.paraformer import cif

device = arlib.setup(seed=0)
test_set = spoken_utterances("test", n=400)
vocab = TranscriptVocab()  # characters: CTC and the autoregressive decoder
word_vocab = TranscriptVocab(unit="word")  # whole words: Paraformer's tokens (section 4)
names = ["speech-ctc", "speech-aed", "speech-aed-words", "speech-paraformer", "speech-paraformer-noglance"]
loaded = [arlib.load(name, device) for name in names]  # each checked against its sidecar's sha256
ctc_model, aed, aed_words, para, para_ng = (c.model for c in loaded)
ctc_meta, aed_meta, aed_words_meta, para_meta, para_ng_meta = (c.meta for c in loaded)
encoder = ctc_model.encoder
refs = [u.transcript for u in test_set]
print(f"device {device}; trained on {ctc_meta['data']['train']['n']:,} utterances of {len(TRAIN_VOICES)} voices; "
      f"{len(test_set)} test utterances ({sum(u.duration for u in test_set) / 60:.1f} min) by "
      f"{len({u.voice for u in test_set})} of the {len(TEST_VOICES)} test voices")
print(f"{len(vocab.words)} words, {vocab.size - 2} characters + blank + end")
for name, meta in [("speech-ctc", ctc_meta), ("speech-aed", aed_meta), ("speech-aed-words", aed_words_meta),
                   ("speech-paraformer", para_meta), ("speech-paraformer-noglance", para_ng_meta)]:
    print(f"{name:>27}: {meta['parameters']:>7,} parameters, {meta['wall_seconds']:5.0f} s to train, "
          f"test WER {meta['metrics']['test_wer']:.3f}")
assert not set(TRAIN_VOICES) & {u.voice for u in test_set}  # unseen speakers


def sync():
    """Wait for the accelerator before reading the clock (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def encode(utterances):
    """Features and the shared encoder for a batch: memory (B, T', d) and its lengths (B,)."""
    feats, lengths = speech_features([u.waveform for u in utterances])
    return encoder(feats.to(device), lengths.to(device))


# %% [markdown]
# ## 1. Features from scratch
#
# A microphone gives 16,000 numbers a second. Speech lives in how the energy at each frequency changes
# over tens of milliseconds, so the first step cuts the wave into overlapping windows of 25 ms
# ($N = n_\text{fft} = 400$ samples) every 10 ms (hop $H = 160$), tapers each with a Hann window $w$
# and takes its discrete Fourier transform: the short-time Fourier transform, with $f = 0, \dots, N/2$
# indexing the frequency bins and the frames centred by reflecting the wave at both ends
#
# $$X_t(f) = \sum_{n=0}^{N-1} w(n)\, x(tH + n)\, e^{-2\pi i f n / N}, \qquad P_t(f) = |X_t(f)|^2 .\tag{1}$$
#
# Hearing resolves low frequencies finely and high ones coarsely, so the 201 power bins are pooled by 80
# triangular filters equally spaced on the mel scale $m = 2595 \log_{10}(1 + f/700)$ (chapter 0), and
# the log compresses the range as loudness perception does: $\log(M P_t + \epsilon)$. We normalize each
# channel over the utterance to zero mean and unit variance, which removes loudness and part of a
# voice's colour.

# %%
def power_spectrogram(wave, n_fft=400, hop=160):
    """(T,) -> (n_fft // 2 + 1, frames): eq. (1) with the wave reflected at both ends (torch.stft's `center`)."""
    padded = F.pad(wave[None, None], (n_fft // 2, n_fft // 2), mode="reflect")[0, 0]
    frames = padded.unfold(0, n_fft, hop)  # (frames, n_fft): one window per row
    return torch.fft.rfft(frames * torch.hann_window(n_fft)).abs().pow(2).T


utt = test_set[3]
power = power_spectrogram(utt.waveform)
reference = torch.stft(utt.waveform, 400, 160, window=torch.hann_window(400), return_complex=True).abs().pow(2)
assert torch.allclose(power, reference, rtol=1e-4, atol=1e-6 * reference.max())
ours = torch.log(mel_filterbank(80, 400, 16000) @ power + 1e-6)
assert torch.allclose(ours, log_mel(utt.waveform), atol=1e-4)
print(f"{utt.transcript!r}: {utt.duration:.2f} s, voice {utt.voice}; "
      f"{power.shape[0]} frequency bins x {power.shape[1]} frames -> 80 mel channels")

# %% [markdown]
# SpecAugment {cite}`park2019specaugment` regularizes training by hiding a few bands of channels and a few
# spans of frames, so that the model cannot lean on any one of them. The CTC encoder was trained with
# two bands of up to 10 channels and two spans of up to 5 % of the frames (the figure doubles the
# spans to make them visible).

# %%
feats, lengths = speech_features([utt.waveform])
masked = spec_augment(feats, lengths, torch.Generator().manual_seed(3), time_ratio=0.1)
fig, axes = plt.subplots(3, 1, figsize=(7, 4.6), dpi=72)  # spectrograms: few pixels keep the book small
axes[0].plot(torch.arange(len(utt.waveform)) / 16000, utt.waveform, lw=0.4)
axes[0].set(xlim=(0, utt.duration), ylabel="amplitude", title=f"{utt.transcript!r} ({utt.voice})")
axes[1].imshow(feats[0].T, origin="lower", aspect="auto", cmap="magma", extent=(0, utt.duration, 0, 80))
axes[1].set(ylabel="mel channel", title="normalized log-mel frames")
axes[2].imshow(masked[0].T, origin="lower", aspect="auto", cmap="magma", extent=(0, utt.duration, 0, 80))
axes[2].set(ylabel="mel channel", xlabel="seconds", title="with SpecAugment's masks")
plt.tight_layout()
arlib.export_figure(fig, "spectrograms")  # into figures/ when `make execute` runs
plt.show()
hidden_fraction = float((masked == 0).float().mean() - (feats == 0).float().mean())
assert 0 < hidden_fraction < 0.5
print(f"SpecAugment hid {hidden_fraction:.0%} of this utterance's values")

# %% [markdown]
# ## 2. The autoregressive baseline: an attention encoder-decoder
#
# The encoder turns the frames into a sequence of vectors $h_{1:T'}$; the decoder is a small GPT over
# tokens whose every layer also attends to $h$ (cross-attention): chapter 1's blocks (`arlib.text.gpt`)
# with a cross-attention inserted (the encoder's layers are the same blocks without it). It is trained by teacher forcing
# on $(\texttt{<s>}, y_1, \dots, y_U) \to (y_1, \dots, y_U, \texttt{</s>})$ and decodes like chapter 1's
# GPT, with a KV cache for its own past and the encoder's keys and values computed once:
#
# $$\hat y_u = \arg\max_c\ p(c \mid \hat y_{<u}, h), \qquad u = 1, 2, \dots \text{ until } \texttt{</s>}.\tag{2}$$
#
# Greedy decoding takes the best token at each step; *beam search* keeps the $B$ best prefixes and can
# recover from an early choice that looked best locally. The book trains two such decoders on the shared
# encoder: one writes characters (the usual choice for an open vocabulary, about 25 steps for a mean
# transcript here: 24 characters and the end token), the other whole words from the closed 40-word vocabulary (about 5 steps). The
# *real-time factor* (RTF) is processing time over audio duration: 0.01 means a second of speech takes
# 10 ms. We measure it in section 7, one utterance at a time (the latency a user waits for). (The WERs
# printed at the top are the recipes' own, measured at the end of training in batches; batching and the
# int8 storage can flip a word here and there, so they differ slightly from the numbers below.)

# %%
@torch.no_grad()
def transcribe_aed(utterances, beam=None, model=aed, units=vocab):
    memory, lengths = encode(utterances)
    if beam is None:
        return [units.decode(ids) for ids in model.greedy(memory, lengths)[0]]
    return [units.decode(model.beam_search(memory[i:i + 1], lengths[i:i + 1], beam=beam)[0][0])
            for i in range(len(utterances))]


@torch.no_grad()
def sequence_log_prob(memory, lengths, text):
    """log p(text </s> | audio) under the decoder, by one teacher-forced pass."""
    ids = vocab.encode(text, strict=False)
    tokens = torch.tensor([[EOS] + ids], device=device)
    logp = aed(tokens, memory, lengths).log_softmax(-1)[0]
    return float(sum(logp[i, t] for i, t in enumerate(ids + [EOS])))


def batched(utterances, size=50):
    return [utterances[i:i + size] for i in range(0, len(utterances), size)]


aed_greedy = [t for chunk in batched(test_set) for t in transcribe_aed(chunk)]
aed_words_greedy = [t for chunk in batched(test_set)
                    for t in transcribe_aed(chunk, model=aed_words, units=word_vocab)]
wer_aed_words = word_error_rate(refs, aed_words_greedy)
beam_subset = test_set[:100]
aed_beam = transcribe_aed(beam_subset, beam=4)
wer_aed = word_error_rate(refs, aed_greedy)
wer_greedy_100, wer_beam_100 = word_error_rate(refs[:100], aed_greedy[:100]), word_error_rate(refs[:100], aed_beam)
memory, lengths = encode(beam_subset)
gains = [sequence_log_prob(memory[i:i + 1], lengths[i:i + 1], b) - sequence_log_prob(memory[i:i + 1], lengths[i:i + 1], g)
         for i, (g, b) in enumerate(zip(aed_greedy[:100], aed_beam))]
print(f"AED over characters, greedy: WER {wer_aed:.3f}, CER {char_error_rate(refs, aed_greedy):.3f}; "
      f"over words: WER {wer_aed_words:.3f} ({len(refs)} utterances)")
print(f"first 100: greedy WER {wer_greedy_100:.3f}, beam 4 WER {wer_beam_100:.3f}; beam's transcript is more "
      f"probable in {sum(g > 1e-6 for g in gains)}, equal in {sum(abs(g) <= 1e-6 for g in gains)}, "
      f"less probable in {sum(g < -1e-6 for g in gains)}")
assert wer_aed < 0.15 and wer_aed_words < 0.15  # both get most words of unseen voices right
assert sum(g < -1e-6 for g in gains) <= 2 and wer_beam_100 <= wer_greedy_100  # beam search: rarely worse ...
assert sum(abs(g) <= 1e-6 for g in gains) >= 80  # ... and mostly the same transcript: the decoder is confident


# %% [markdown]
# ## 3. CTC: label every frame, then collapse
#
# CTC {cite}`graves2006connectionist` gives the encoder one linear layer to the characters plus a *blank*
# $\varnothing$ and reads one symbol per frame. A path $\pi$ of $T$ symbols has probability
# $\prod_t y_t(\pi_t)$, and the collapse map $\mathcal B$ removes repeats and then blanks:
# $\mathcal B(\texttt{tt}\varnothing\texttt{w}\varnothing\varnothing\texttt{oo}) = \texttt{two}$. The
# transcript's probability sums over its paths, $p(l \mid x) = \sum_{\pi \in \mathcal B^{-1}(l)}
# \prod_t y_t(\pi_t)$. There are exponentially many, but they share prefixes. Interleave blanks,
# $l' = (\varnothing, l_1, \varnothing, l_2, \dots, l_U, \varnothing)$ of length $S = 2U + 1$, and let
# $\alpha_t(s)$ ($s = 1, \dots, S$) be the total probability of the path prefixes $\pi_{1:t}$ that
# collapse to $l_{1:\lfloor s/2 \rfloor}$ and sit on $l'_s$ at frame $t$. They start with
# $\alpha_1(1) = y_1(\varnothing)$, $\alpha_1(2) = y_1(l_1)$ and $\alpha_1(s) = 0$ otherwise, and then
#
# $$\alpha_t(s) = \big[\alpha_{t-1}(s) + \alpha_{t-1}(s-1) + [l'_s \ne \varnothing,\ l'_s \ne l'_{s-2}]\,
# \alpha_{t-1}(s-2)\big]\, y_t(l'_s), \qquad p(l \mid x) = \alpha_T(S) + \alpha_T(S-1).\tag{3}$$
#
# The skip from $s-2$ jumps over a blank, which is allowed between different labels only: between two
# equal labels the blank is what keeps them from collapsing into one. Products of hundreds of
# probabilities underflow, so we work with logarithms and $\log(e^a + e^b)$. One more trap: "log 0" as
# $-\infty$ gives the right values but a gradient of $\infty - \infty$ = nan wherever two impossible
# states meet, so we use $-10^{30}$. Below, eq. (3) on the book's CTC model's output for a real
# utterance, against `arlib.speech.ctc` and PyTorch.

# %% tags=["remove-in-student"]
def ctc_log_likelihood(log_probs, label, blank=0):
    """log p(label | x) by eq. (3) in log space: log_probs (T, C), label a list of ints."""
    ext = [blank]
    for c in label:
        ext += [c, blank]
    T, S = log_probs.shape[0], len(ext)
    alpha = torch.full((S,), -1e30, dtype=log_probs.dtype)  # "log 0", finite so that gradients stay finite
    alpha[0] = log_probs[0, ext[0]]
    if S > 1:
        alpha[1] = log_probs[0, ext[1]]
    for t in range(1, T):
        previous = alpha.clone()
        for s in range(S):
            terms = [previous[s]] + ([previous[s - 1]] if s >= 1 else [])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(previous[s - 2])
            alpha[s] = torch.logsumexp(torch.stack(terms), 0) + log_probs[t, ext[s]]
    return torch.logsumexp(alpha[-2:], 0) if S > 1 else alpha[-1]


# %%
if "ctc_log_likelihood" not in globals():  # the student version hides the cell above: it answers exercise 5.2
    def ctc_log_likelihood(log_probs, label, blank=0):
        """Stand-in for eq. (3) written out: arlib's forward recursion."""
        return ctc_forward(log_probs[None], [len(log_probs)], torch.tensor([label]), [len(label)], blank)[0]

utt = test_set[0]
feats, lengths = speech_features([utt.waveform])
with torch.no_grad():
    hidden, out_lengths = encoder(feats.to(device), lengths.to(device))
logits = ctc_model.head(hidden)[0].double().cpu().requires_grad_()  # (T', C)
label = vocab.encode(utt.transcript)
ours = -ctc_log_likelihood(logits.log_softmax(-1), label)
lib = -ctc_forward(logits.log_softmax(-1)[None], [logits.shape[0]], torch.tensor([label]), [len(label)])[0]
torch_loss = F.ctc_loss(logits.log_softmax(-1)[:, None], torch.tensor([label]), [logits.shape[0]], [len(label)],
                        reduction="sum")
g_ours, = torch.autograd.grad(ours, logits)
g_torch, = torch.autograd.grad(torch_loss, logits)
assert torch.allclose(ours, lib, atol=1e-9) and torch.allclose(ours, torch_loss, atol=1e-9)
assert torch.allclose(g_ours, g_torch, atol=1e-9)
print(f"{utt.transcript!r}: {logits.shape[0]} frames, {len(label)} characters; -log p = {ours.item():.6f} "
      f"(eq. 3), {lib.item():.6f} (arlib.speech.ctc), {torch_loss.item():.6f} (torch); gradients agree to "
      f"{(g_ours - g_torch).abs().max().item():.1e}")

# %% [markdown]
# A detail worth knowing: the gradients agree with respect to the *logits*, through the log-softmax.
# With respect to its input log-probabilities PyTorch's CTC returns $y_t(k) - \gamma_t(k)$ (with
# $\gamma$ the posterior of being at label $k$ at frame $t$): the gradient with respect to the logits,
# which is correct only when a log-softmax comes right before it, as it always should. The true
# gradient with respect to a log-probability is $-\gamma_t(k)$; the difference is exactly $y_t(k)$.

# %%
log_probs = logits.detach().log_softmax(-1).requires_grad_()
g_true, = torch.autograd.grad(-ctc_forward(log_probs[None], [logits.shape[0]], torch.tensor([label]), [len(label)])[0],
                              log_probs)
g_shortcut, = torch.autograd.grad(F.ctc_loss(log_probs[:, None], torch.tensor([label]), [logits.shape[0]],
                                             [len(label)], reduction="sum"), log_probs)
assert torch.allclose(g_shortcut - g_true, log_probs.exp(), atol=1e-9)
print(f"torch's gradient minus the true one equals y_t(k) to {(g_shortcut - g_true - log_probs.exp()).abs().max():.1e}")

# %% [markdown]
# **Decoding.** The best *path* is easy: the most probable symbol at every frame, collapsed (greedy
# decoding). The best *transcript* sums over paths, and prefix beam search {cite}`hannun2014first` keeps, for each candidate
# prefix, the probability of its paths ending in a blank and ending in its last label: a repeated
# label extends the prefix only after a blank. On a well-trained model they rarely disagree. CTC's
# posteriors are *spiky*: just over half the frames are blank at their argmax, almost all frames put
# more than 0.9 on one symbol, and each character is a sharp peak, as the picture shows. The paths
# that compete with the best one mostly move a spike by a frame, and they collapse to the same
# transcript (section 5 measures how many there are).

# %%
@torch.no_grad()
def ctc_posteriors(utterances):
    feats, lengths = speech_features([u.waveform for u in utterances])
    return ctc_model(feats.to(device), lengths.to(device))


ctc_greedy, ctc_beam, blank_frames, confident, frames = [], [], 0, 0, 0
for chunk in batched(test_set):
    lp, lens = ctc_posteriors(chunk)
    ctc_greedy += [vocab.decode(ids) for ids in greedy_decode(lp, lens)]
    for b, n in enumerate(lens.tolist()):
        if len(ctc_beam) < 100:
            ctc_beam.append(vocab.decode(prefix_beam_search(lp[b, :n].cpu(), beam=8)[0][0]))
        best = lp[b, :n].max(-1)
        blank_frames += int((best.indices == 0).sum())
        confident += int((best.values > math.log(0.9)).sum())
        frames += n
wer_ctc = word_error_rate(refs, ctc_greedy)
wer_ctc_beam = word_error_rate(refs[:100], ctc_beam)
print(f"CTC greedy: WER {wer_ctc:.3f}, CER {char_error_rate(refs, ctc_greedy):.3f}; first 100: greedy "
      f"{word_error_rate(refs[:100], ctc_greedy[:100]):.3f}, prefix beam 8 {wer_ctc_beam:.3f} "
      f"({sum(a != b for a, b in zip(ctc_greedy, ctc_beam))} transcripts differ)")
print(f"{blank_frames / frames:.0%} of frames are blank at their argmax; "
      f"{confident / frames:.0%} of frames put more than 0.9 on one symbol")
assert blank_frames / frames > 0.5 and confident / frames > 0.8  # spiky, blank-dominated posteriors
assert abs(wer_ctc_beam - word_error_rate(refs[:100], ctc_greedy[:100])) <= 0.01  # beam search buys little here

lp, lens = ctc_posteriors([test_set[0]])
probs = lp[0, :lens[0]].exp().cpu()
fig, ax = plt.subplots(figsize=(7, 2.4), dpi=80)
ax.plot(probs[:, 0], color="0.7", lw=1, label="blank")
for c in probs[:, 1:].max(0).values.argsort(descending=True)[:12].tolist():
    ax.plot(probs[:, c + 1], lw=1)
    peak = int(probs[:, c + 1].argmax())
    label = vocab.decode([c + 1]).replace(" ", "␣") or "</s>"
    ax.text(peak, min(1.02, float(probs[peak, c + 1]) + 0.02), label, ha="center", fontsize=8)
ax.set(xlabel="encoder frame (20 ms)", ylabel="posterior", title=f"CTC posteriors for {test_set[0].transcript!r}")
ax.legend(loc="center right", fontsize=8)
arlib.export_figure(fig, "ctc-posteriors")  # into figures/ when `make execute` runs
plt.show()


# %% [markdown]
# ## 4. Paraformer: count the tokens, then decode them all at once
#
# CTC's outputs are conditionally independent given the audio: no output sees another. Paraformer
# {cite}`gao2022paraformer` keeps a decoder with attention between tokens, but makes it parallel. It needs
# two things a parallel decoder lacks: how many tokens there are and one input vector per token.
# *Continuous integrate-and-fire* (CIF, {cite}`dong2020cif`) provides both. A small predictor reads a weight
# $\alpha_t \in (0, 1)$ for every encoder frame; walking through the frames it accumulates the weights
# and *fires* a token each time the sum crosses 1. The token's acoustic embedding is the
# $\alpha$-weighted sum of the frames it integrated, and the frame that crosses the threshold is split:
# the part that completes the token goes to it, the rest starts the next:
#
# $$e_j = \sum_t w_{tj}\, h_t, \qquad w_{tj} = \big|\,[c_{t-1}, c_t) \cap [j, j+1)\,\big|, \qquad
#   c_t = \textstyle\sum_{\tau \le t} \alpha_\tau .\tag{4}$$
#
# In training the weights are rescaled to sum to the target length $N$, so the right number of tokens
# fire, and the *quantity loss* $|N - \sum_t \alpha_t|$ teaches the predictor to count; at inference it
# fires $\lfloor \sum_t \alpha_t + 0.45 \rfloor$ tokens (a tail that rounds a nearly finished last
# token up). The decoder then reads all $e_j$ at once, attending to each other and to the encoder, and
# predicts every token in one pass.
#
# **Which tokens?** CIF fires once per token, so a token should be an acoustic event that a weight per
# frame can count. Paraformer's own tokens were Mandarin characters, one syllable each. English letters
# are not such events ("eight" is five letters and two sounds), so the book's Paraformer fires once per
# *word* and predicts words from the 40-word vocabulary; WER is measured on words for every model, so
# the comparison stays fair. Below, the firing loop written as a reader would, against the interval
# form (4) that `arlib.speech.paraformer.cif` computes for a whole batch at once.

# %%
def cif_loop(h, alpha, threshold=1.0):
    """Integrate and fire, frame by frame: (T, d), (T,) -> (tokens fired, d) and the firing frames."""
    fired, frames, acc, emb = [], [], 0.0, torch.zeros(h.shape[1])
    for t, a in enumerate(alpha.tolist()):
        if acc + a < threshold:
            acc, emb = acc + a, emb + a * h[t]
            continue
        part = threshold - acc  # completes the current token
        fired.append(emb + part * h[t])
        frames.append(t)
        acc, emb = a - part, (a - part) * h[t]  # the rest starts the next one
    return torch.stack(fired), frames


utt = test_set[5]
memory, lengths = encode([utt])
with torch.no_grad():
    alpha = para.predictor(memory, lengths)[0].cpu()
h = memory[0].cpu()
fired, firing_frames = cif_loop(h, alpha)
n_fire = int(para.token_count(alpha[None]))
assert torch.allclose(fired, cif(h[None], alpha[None], torch.tensor([len(fired)]))[0], atol=1e-5)
print(f"{utt.transcript!r}: {len(utt.words)} words; sum(alpha) = {alpha.sum():.3f}; "
      f"the loop fires {len(fired)} times, the predictor's count with the tail is {n_fire}")

fig, ax = plt.subplots(figsize=(8, 2.6))
ax.bar(range(len(alpha)), alpha, color="C0", width=1.0, label=r"$\alpha_t$")
ax2 = ax.twinx()
ax2.plot(alpha.cumsum(0), color="C1", label=r"$c_t$")
ax2.set_ylabel("cumulative weight")
for j, t in enumerate(firing_frames):
    ax.axvline(t, color="0.6", lw=0.6)
    ax.text(t, 1.03, utt.words[j] if j < len(utt.words) else "?", ha="center", fontsize=8,
            transform=ax.get_xaxis_transform())
ax.set(xlabel="encoder frame (20 ms)", ylabel=r"$\alpha_t$")
ax.set_title("CIF weights and firing frames (each labelled with the word that fired)", pad=16)
arlib.export_figure(fig, "cif-firing")  # into figures/ when `make execute` runs
plt.show()


# %% [markdown]
# **What each part buys.** Four recognizers share the encoder: CTC's linear layer, Paraformer trained
# with the glancing sampler, Paraformer trained without it, and Paraformer given the true number of
# tokens (an oracle that shows what counting errors cost). The glancing language-model sampler
# (GLAT, {cite}`qian2021glancing`) trains the parallel decoder to use the other tokens: a first pass
# without gradients counts the wrong predictions, then $\lceil \lambda \cdot \text{wrong} \rceil$
# random positions ($\lambda = 0.75$) get the *true* word's embedding instead of the acoustic one
# for the trained second pass, whose loss covers every position (GLAT scores only the positions left
# acoustic; with the answer in its input, a glanced position adds little to ours). At inference every
# position is acoustic, so the decoder must have learnt to fix one token from its neighbours.

# %%
@torch.no_grad()
def transcribe_para(model, utterances, oracle=False):
    memory, lengths = encode(utterances)
    counts = torch.tensor([len(u.words) for u in utterances], device=device) if oracle else None
    return [word_vocab.decode(ids) for ids in model.decode(memory, lengths, counts)]


@torch.no_grad()
def count_accuracy(model, utterances):
    memory, lengths = encode(utterances)
    predicted = model.token_count(model.predictor(memory, lengths)).cpu()
    true = torch.tensor([len(u.words) for u in utterances])
    return (predicted == true).float().mean().item(), (predicted - true).abs().float().mean().item()


para_out = {name: [t for chunk in batched(test_set) for t in transcribe_para(model, chunk, oracle)]
            for name, model, oracle in [("glancing", para, False), ("no glancing", para_ng, False),
                                        ("glancing, oracle count", para, True),
                                        ("no glancing, oracle count", para_ng, True)]}
para_wer = {name: word_error_rate(refs, hyps) for name, hyps in para_out.items()}
counts = {name: [count_accuracy(model, chunk) for chunk in batched(test_set)] for name, model in
          [("glancing", para), ("no glancing", para_ng)]}
count_exact = {name: statistics.mean(a for a, _ in rows) for name, rows in counts.items()}
print(f"{'recognizer':>28} {'WER':>6} {'CER':>6}")
print(f"{'CTC (same encoder)':>28} {wer_ctc:6.3f} {char_error_rate(refs, ctc_greedy):6.3f}")
for name, hyps in para_out.items():
    print(f"{'Paraformer, ' + name:>28} {para_wer[name]:6.3f} {char_error_rate(refs, hyps):6.3f}")
print(f"token count exactly right: {count_exact['glancing']:.1%} (glancing), {count_exact['no glancing']:.1%} "
      f"(no glancing)")
assert para_wer["glancing"] < wer_ctc / 3 and para_wer["glancing"] < wer_aed_words / 3  # words, counted by CIF
assert count_exact["glancing"] > 0.9  # the predictor counts the words of unseen voices
assert para_wer["glancing, oracle count"] <= para_wer["glancing"]  # counting errors cost a little ...
assert para_wer["glancing"] - para_wer["glancing, oracle count"] < 0.01  # ... under a point
assert abs(para_wer["glancing"] - para_wer["no glancing"]) < 0.01  # glancing: no clear gain here (see below)

# %% [markdown]
# Three things stand out. Paraformer over words is far more accurate than CTC over characters on the
# same encoder: CTC gets almost every character right (CER about 2.5 %) but a single wrong letter
# makes a wrong word, while Paraformer chooses among 40 whole words. The predictor counts the words
# right about 97 % of the time, and an oracle count removes only a fraction of a point of WER. And the
# glancing sampler buys nothing measurable. That is what one would expect *for this corpus*: its word
# sequences are drawn independently and uniformly, so a token's neighbours say nothing about it, and
# a decoder trained to use them has nothing to use. Glancing is for real speech, where words depend on
# each other.

# %% [markdown]
# ## 5. CASS-NAT's alignment
#
# CASS-NAT {cite}`fan2021cassnat` takes the token count and positions from CTC rather than from a
# separate predictor. During training it aligns the transcript to the frames with the *Viterbi* path, the
# single most probable path through eq. (3)'s trellis (maximum instead of sum), and cuts the encoder
# output into one segment per token; each token's acoustic embedding is then extracted from its segment
# by attention, and a decoder reads them all at once, as Paraformer's does. At inference the segments
# come from the greedy CTC path; the last line below compares that way of counting tokens (the words of
# the greedy CTC transcript) with CIF's. Here is the alignment on a real utterance. Spiky as the posteriors
# are, the best path is far from the only one: paths that move a character's first or last frame by one
# are nearly as probable, and together they outweigh it by orders of magnitude. That is why CTC's loss
# sums over paths, and why an alignment is a good segmentation rather than *the* alignment.

# %%
utt = test_set[5]
lp, lens = ctc_posteriors([utt])
lp = lp[0, :lens[0]].cpu()
label = torch.tensor(vocab.encode(utt.transcript))
path = viterbi_align(lp, label)
segments = token_segments(path, len(label))
ext = [0] + [x for c in label.tolist() for x in (c, 0)]
path_labels = [ext[s] for s in path.tolist()]
collapsed = [c for i, c in enumerate(path_labels) if c != 0 and (i == 0 or c != path_labels[i - 1])]
assert collapsed == label.tolist()  # the path spells the transcript
viterbi_score = float(sum(lp[t, c] for t, c in enumerate(path_labels)))
all_paths = ctc_forward(lp[None].double(), [len(lp)], label[None], [len(label)]).item()
best_share = math.exp(viterbi_score - all_paths)
assert best_share <= 1 + 1e-6
feats, _ = speech_features([utt.waveform])
fig, ax = plt.subplots(figsize=(7, 2.4), dpi=72)
ax.imshow(feats[0].T, origin="lower", aspect="auto", cmap="magma", extent=(0, feats.shape[1] / 2, 0, 80))
for (start, end), c in zip(segments, utt.transcript):
    ax.axvspan(start, end, color="white", alpha=0.25)
    ax.text((start + end) / 2, 82, c, ha="center", fontsize=9)
ax.set(xlabel="encoder frame (20 ms)", ylabel="mel channel")
ax.set_title("Viterbi alignment of the transcript (CTC): each character's frames", pad=16)
arlib.export_figure(fig, "ctc-viterbi-alignment")  # into figures/ when `make execute` runs
plt.show()
ctc_count_exact = statistics.mean(float(len(g.split()) == len(r.split())) for g, r in zip(ctc_greedy, refs))
print(f"the best path has log-probability {viterbi_score:.3f}, all paths of the transcript together "
      f"{all_paths:.3f}: the best path holds {best_share:.1%} of the transcript's probability")
assert best_share < 0.1  # many paths share the mass: they differ in the frames where a spike starts and ends
print(f"word count from the greedy CTC path exactly right: {ctc_count_exact:.1%} (CIF's predictor: "
      f"{count_exact['glancing']:.1%})")
assert count_exact["glancing"] > ctc_count_exact + 0.05  # CIF counts words better than CTC's spaces

# %% [markdown]
# ## 6. Where an encoder-decoder's time goes
#
# Two habits of efficient encoder-decoder systems can be measured here. Both are findings of Żelasko et
# al. {cite}`zelasko2025training` on large encoder-decoder speech models: random mini-batches spend much of
# their compute on padding, and moving parameters from the decoder into the encoder speeds up inference
# (machine translation had found the same for depth, {cite}`kasai2021deep`). **Batching**: utterances in a batch are
# padded to the longest, and the padding is computed and thrown away. Sorting by length and batching
# neighbours (length bucketing) removes most of it; on a CPU, where time follows the arithmetic, that
# saves time. **Depth**: the encoder runs once per utterance, all frames in parallel; the decoder runs
# $U + 1$ times in sequence, one token each. At batch 1 with small layers, time follows the number of
# sequential calls more than the arithmetic, so a layer moved into the encoder is paid once instead of
# $U + 1$ times.

# %%
def padding_fraction(lengths, batch_size, order):
    """Share of a batched tensor that is padding, batching `lengths` in `order`."""
    padded = real = 0
    for s in range(0, len(order), batch_size):
        chunk = [lengths[i] for i in order[s:s + batch_size]]
        padded += max(chunk) * len(chunk)
        real += sum(chunk)
    return 1 - real / padded


BATCH = 16
frame_counts = [int(u.waveform.numel() // 160 + 1) for u in test_set]
shuffled = torch.randperm(len(frame_counts), generator=torch.Generator().manual_seed(0)).tolist()
by_length = sorted(range(len(frame_counts)), key=frame_counts.__getitem__)
pad_random = padding_fraction(frame_counts, BATCH, shuffled)
pad_bucket = padding_fraction(frame_counts, BATCH, by_length)
print(f"batches of {BATCH} test utterances: {pad_random:.1%} padding when drawn at random, "
      f"{pad_bucket:.1%} when sorted by length")
assert pad_random > 0.3 and pad_bucket < 0.05


def time_encoder(order):
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(order), BATCH):
            encode([test_set[i] for i in order[s:s + BATCH]])
    sync()
    return time.perf_counter() - start


encode(test_set[:BATCH])  # warm up
t_random, t_bucket = time_encoder(shuffled), time_encoder(by_length)
print(f"encoding all {len(test_set)} in batches of {BATCH}: {t_random:.2f} s random, {t_bucket:.2f} s by length "
      f"({t_random / t_bucket:.2f}x)")
if device.type == "cpu":  # on a GPU, batches this small cost about the same padded or not
    check_timing(t_bucket < t_random, f"bucketed batches should encode faster: {t_bucket:.2f} s vs {t_random:.2f} s")

# %% [markdown]
# For depth we build untrained models with the same eight layers split three ways and time greedy
# decoding forced to the test set's mean transcript length (speed does not depend on the weights), the best of
# three interleaved rounds.

# %%
from arlib.speech.models import SpeechEncoder  # noqa: E402

mean_chars = round(statistics.mean(len(r) for r in refs))
timing_set = test_set[:20]


def build_split(enc_layers, dec_layers):
    torch.manual_seed(0)
    enc = SpeechEncoder(d=64, layers=enc_layers).to(device).eval()
    dec = AttentionDecoder(vocab.size, d=64, layers=dec_layers).to(device).eval()
    return enc, dec


@torch.no_grad()
def decode_steps(dec, memory, lengths, steps):
    """Greedy decoding for exactly `steps` tokens (no stop at the end token): the AED's loop, timed alone."""
    cache, token = dec.new_cache(memory), torch.full((memory.shape[0], 1), EOS, device=memory.device)
    for _ in range(steps):
        token = dec(token, memory, lengths, cache)[:, -1].argmax(-1, keepdim=True)
    return cache.length


def time_split(enc, dec, feats):
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for x, n in feats:
            memory, lengths = enc(x.to(device), n.to(device))
            assert decode_steps(dec, memory, lengths, mean_chars + 1) == mean_chars + 1
    sync()
    return (time.perf_counter() - start) / len(feats)


splits = {s: build_split(*s) for s in [(6, 2), (4, 4), (2, 6)]}
timing_feats = [speech_features([u.waveform]) for u in timing_set]
rounds = [{s: 1000 * time_split(*models, timing_feats) for s, models in splits.items()} for _ in range(3)]
split_ms = {s: min(r[s] for r in rounds) for s in splits}  # the best of three interleaved rounds
for (e, d), ms in split_ms.items():
    print(f"encoder {e} layers, decoder {d} layers: {ms:5.1f} ms per utterance ({mean_chars + 1} decoder steps)")
check_timing(split_ms[(6, 2)] < split_ms[(4, 4)] < split_ms[(2, 6)],
             f"moving depth into the decoder should slow decoding: {split_ms}")

# %% [markdown]
# ## 7. One table: accuracy against speed on unseen voices
#
# Every recognizer transcribes 200 test utterances one at a time (batch 1, the latency a user feels),
# features included, interleaved so that they share the machine's state; the real-time factor is total
# time over total audio. A last row times only what every recognizer pays before it decodes anything:
# the features and the shared encoder. Each WER comes with a 95 % bootstrap interval over the utterances
# and its errors split into substitutions, deletions and insertions (S/D/I); two recognizers are compared by
# a *paired* bootstrap, both scored on the same resampled utterances (Bisani and Ney
# {cite}`bisani2004bootstrap`), and a difference is claimed only when its interval excludes zero.

# %%
recognizers = {
    "AED chars, greedy": lambda u: transcribe_aed([u])[0],
    "AED chars, beam 4": lambda u: transcribe_aed([u], beam=4)[0],
    "AED words, greedy": lambda u: transcribe_aed([u], model=aed_words, units=word_vocab)[0],
    "CTC chars, greedy": lambda u: vocab.decode(greedy_decode(*ctc_posteriors([u]))[0]),
    "CTC chars, prefix beam 8": lambda u: vocab.decode(prefix_beam_search(ctc_posteriors([u])[0][0].cpu(), beam=8)[0][0]),
    "Paraformer words": lambda u: transcribe_para(para, [u])[0],
    "Paraformer words, no glancing": lambda u: transcribe_para(para_ng, [u])[0],
    "features + encoder only": lambda u: encode([u]),
}
timed = test_set[:200]
for fn in recognizers.values():
    fn(timed[0])  # warm-up
seconds = dict.fromkeys(recognizers, 0.0)
outputs = {name: [] for name in recognizers}
for u in timed:
    for name, fn in recognizers.items():
        sync()
        start = time.perf_counter()
        outputs[name].append(fn(u))
        sync()
        seconds[name] += time.perf_counter() - start
audio = sum(u.duration for u in timed)
timed_refs = [u.transcript for u in timed]
encoder_params = sum(p.numel() for p in encoder.parameters())
own = {"AED chars": aed_meta, "AED words": aed_words_meta, "Paraformer words, no": para_ng_meta,
       "Paraformer words": para_meta, "CTC": ctc_meta}
own["features"] = {"parameters": 0}
params = {name: next(m["parameters"] for k, m in own.items() if name.startswith(k)) for name in recognizers}
params = {name: p - encoder_params if name.startswith("CTC") else p for name, p in params.items()}
rtf = {name: s / audio for name, s in seconds.items()}
wer_table = {name: word_error_rate(timed_refs, outs) if isinstance(outs[0], str) else math.nan
             for name, outs in outputs.items()}
char_base, word_base = rtf["AED chars, greedy"], rtf["AED words, greedy"]
print(f"{'recognizer':>30} {'parameters':>17} {'WER [95 %]':>21} {'S/D/I':>12} {'RTF':>7} {'vs AED chars':>12} "
      f"{'vs AED words':>12}")
for name in recognizers:
    if math.isnan(wer_table[name]):
        wer_text, sdi = f"{'-':>21}", f"{'-':>12}"
    else:
        _, low, high = wer_interval(timed_refs, outputs[name])
        counts = word_error_counts(timed_refs, outputs[name])
        wer_text = f"{wer_table[name]:6.3f} [{low:.3f}, {high:.3f}]"
        sdi = f"{counts['substitutions']:>4}/{counts['deletions']:>3}/{counts['insertions']:>3}"
    print(f"{name:>30} {encoder_params:>7,} + {params[name]:>7,} {wer_text} {sdi} {rtf[name]:7.4f} "
          f"{char_base / rtf[name]:11.1f}x {word_base / rtf[name]:11.1f}x")
print(f"{len(timed)} utterances, {audio:.0f} s of audio, batch 1; parameters: the shared encoder + the recognizer's own")
assert outputs["CTC chars, greedy"] == ctc_greedy[:200]  # batched and one-by-one decoding agree
fixed = rtf["features + encoder only"]
bound = char_base / fixed  # Amdahl: no decoder can be faster than no decoder at all
print(f"features + encoder: {fixed / char_base:.0%} of the character AED's time; so no recognizer on this "
      f"encoder can be more than {bound:.1f}x faster than it")
check_timing(char_base / rtf["CTC chars, greedy"] >= 3 and char_base / rtf["Paraformer words"] >= 2.5,
             "CTC and Paraformer should be at least 3x and 2.5x faster than the character AED")
check_timing(char_base / rtf["CTC chars, greedy"] <= 1.05 * bound,
             "CTC cannot be faster than its encoder alone")
check_timing(char_base / rtf["CTC chars, greedy"] >= 0.8 * bound,
             "CTC should take little more than the encoder")
check_timing(1 / 2 < word_base / rtf["Paraformer words"] < 2,
             f"Paraformer and the word AED should run within a factor of 2 of each other: "
             f"{word_base / rtf['Paraformer words']:.1f}x")
for aed in ("AED chars, greedy", "AED words, greedy"):  # and it is more accurate: paired intervals below zero
    gap = wer_difference(timed_refs, outputs["Paraformer words"], outputs[aed])
    print(f"Paraformer words - {aed}: WER {gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}] (paired bootstrap)")
    assert gap[2] < 0


def wrong_length(name):
    """Share of utterances whose transcript has the wrong number of words."""
    return statistics.mean(float(len(h.split()) != len(r.split())) for h, r in zip(outputs[name], timed_refs))


ctc_words = [w for h in outputs["CTC chars, greedy"] for w in h.split()]
ctc_errors = sum(edit_distance(r.split(), h.split()) for r, h in zip(timed_refs, outputs["CTC chars, greedy"]))
non_words = sum(w not in vocab.words for w in ctc_words)
for name in ["AED chars, greedy", "AED words, greedy", "CTC chars, greedy", "Paraformer words"]:
    print(f"{name:>20}: wrong number of words in {wrong_length(name):.1%} of the transcripts")
print(f"CTC: {non_words} of its words are not in the vocabulary, against {ctc_errors} word errors in all")
assert min(wrong_length("AED chars, greedy"), wrong_length("AED words, greedy")) > 2 * wrong_length("Paraformer words")
assert non_words > 0.5 * ctc_errors  # most of CTC's errors are misspellings
for name in ("AED chars, greedy", "AED words, greedy"):  # missing or extra words: over a third of the AEDs' errors
    assert 0.15 < wrong_length(name) < 0.2
    counts = word_error_counts(timed_refs, outputs[name])
    assert counts["deletions"] + counts["insertions"] > 0.35 * (counts["wer"] * counts["words"])

# %% [markdown]
# **Reading the table.** Paraformer is the most accurate recognizer here and among the fastest: it
# needs one decoder pass where the character AED needs about 25. Against the word AED, the fair
# comparison (same units, same encoder), its speed advantage shrinks to a small factor: with four or
# five words to emit, the word AED's few cached decoder steps cost not much more than Paraformer's
# predictor and its one pass (the two are within a factor of 2 of each other, asserted; the last
# column gives the ratio on this run). What Paraformer keeps is accuracy: its WER is below both
# autoregressive decoders' (the paired intervals above exclude zero). That is a statement about these
# trained systems, not yet about autoregressive against parallel decoding: every decoder here sits on the
# CTC encoder, frozen, which the attention decoders did not help train, and their greedy search can lose
# its place in the audio. The cell below shows where their errors come
# from: the autoregressive decoders get the *number* of words wrong in 15 to 20 % of the transcripts,
# and missing or extra words are more than a third of their errors (the S/D/I column; an attention decoder
# must find its own place in the audio, and it drops or repeats words), while Paraformer's count comes
# from CIF. CTC is the fastest, and most of its wrong words are not words at all: misspellings.
#
# The speed-ups are smaller than the "more than 10x" of the Paraformer paper {cite}`gao2022paraformer`,
# and the last row says why. Amdahl's law: whatever the decoder, every recognizer pays for the features and the encoder, so the
# speed-up over the AED is at most (AED time) / (features + encoder time), printed above, and CTC, whose
# decoder is one linear layer, sits right at that bound. The book's AED is already the efficient kind:
# a six-layer encoder and a two-layer decoder (section 6 showed what a deeper decoder costs), over
# transcripts of about 25 characters. With the usual six-layer decoder, subword tokens and long
# utterances, the autoregressive part grows and so does the bound. These timings are on the CPU the
# chapter runs on, at batch 1. On a GPU the encoder's parallel work gets cheaper while each sequential
# decoder step still costs its launch latency, so the AED's share, and the bound, grow. The speed-up of
# non-autoregressive decoding is a property of the whole system, not of the decoder alone.

# %% [markdown]
# ## Exercises
#
# **Exercise 5.1** (mel filterbank; easy). Write `mel_triangles(n_mels, n_fft, sample_rate)`, the matrix
# that turns a power spectrum into mel energies, of shape $(M, F)$ with $M$ = `n_mels` and
# $F$ = `n_fft // 2 + 1` (`n_fft` is even). Column $k$ is the STFT bin at frequency
# $f_k = k \cdot \text{sample\_rate} / \text{n\_fft}$, from 0 up to the Nyquist frequency
# $\text{sample\_rate}/2$. Place $M + 2$ edges $e_0 < e_1 < \dots < e_{M+1}$ equally spaced on the mel
# scale $m(f) = 2595 \log_{10}(1 + f/700)$ from $m(0) = 0$ to $m(\text{sample\_rate}/2)$, and convert
# them back to Hz. Filter $i$ (row $i$, counting from 0) is the triangle on $e_i, e_{i+1}, e_{i+2}$:
#
# $$H_i(f) = \max\Big(0, \min\Big(\frac{f - e_i}{e_{i+1} - e_i}, \frac{e_{i+2} - f}{e_{i+2} - e_{i+1}}\Big)\Big),$$
#
# which is 1 at its centre $e_{i+1}$ and 0 outside $[e_i, e_{i+2}]$. The check compares your matrix with
# this definition for several sizes and rates, down to a single filter. With 128 filters
# and `n_fft = 1024` at 44.1 kHz the first row is all zeros and the next ones each touch a single bin:
# why, and what would you change?

# %%
def mel_triangles(n_mels, n_fft, sample_rate):
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced in mels from 0 Hz to sample_rate / 2."""
    ### BEGIN SOLUTION
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft  # (F,) bin frequencies
    top = 2595 * math.log10(1 + sample_rate / 2 / 700)  # the Nyquist frequency in mels
    mels = torch.linspace(0, top, n_mels + 2, dtype=torch.float64)
    edges = 700 * (10 ** (mels / 2595) - 1)  # (M + 2,) back in Hz
    filters = torch.zeros(n_mels, len(freqs), dtype=torch.float64)
    for i in range(n_mels):
        lower, centre, upper = edges[i], edges[i + 1], edges[i + 2]
        rising = (freqs - lower) / (centre - lower)
        falling = (upper - freqs) / (upper - centre)
        filters[i] = torch.minimum(rising, falling).clamp(min=0)
    return filters
    ### END SOLUTION


# %%
arlib.checks.mel_filterbank_matrix(mel_triangles)

# %% [markdown]
# **Exercise 5.2** (CTC forward recursion; medium). Write `ctc_log_prob(log_probs, target, blank=0)`
# for one utterance: `log_probs` is a float64 tensor $(T, C)$ of log-probabilities $\log y_t(k)$ and
# `target` a list of $U$ labels $l$ (no blanks). Return $\log p(l \mid x)$ as a float, by the forward
# recursion over $l' = (\_, l_1, \_, l_2, \dots, l_U, \_)$ of length $S = 2U + 1$, entirely in log space.
# With 1-based $s$, $a_1(1) = \log y_1(\_)$, $a_1(2) = \log y_1(l_1)$, every other $a_1(s) = -\infty$, and
#
# $$a_t(s) = \operatorname{logsumexp}\big(a_{t-1}(s),\ a_{t-1}(s-1),\ a_{t-1}(s-2)\big) + \log y_t(l'_s),$$
#
# where the third term is present only when $l'_s$ is a label different from $l'_{s-2}$. The answer is
# $\operatorname{logsumexp}(a_T(S), a_T(S-1))$ (just $a_T(1)$ for an empty target), and $-\infty$ when the
# $T$ frames cannot hold the target. The check tries repeated labels,
# an empty target, targets that exactly fill the frames or do not fit, another blank index, and 400
# frames. How many frames does the target `[1, 1, 2, 2]` need at least, and why is it more than 4?

# %%
def ctc_log_prob(log_probs, target, blank=0):
    """log p(target | x) for one utterance: log_probs (T, C), target a list of labels without blanks."""
    ### BEGIN SOLUTION
    T = log_probs.shape[0]
    ext = [blank]
    for label in target:
        ext += [label, blank]  # l' = (_, l_1, _, ..., l_U, _)
    S = len(ext)
    neg_inf = torch.tensor(-math.inf, dtype=log_probs.dtype)
    a = torch.full((S,), -math.inf, dtype=log_probs.dtype)
    a[0] = log_probs[0, ext[0]]
    if S > 1:
        a[1] = log_probs[0, ext[1]]
    for t in range(1, T):
        new = torch.empty(S, dtype=log_probs.dtype)
        for s in range(S):
            terms = [a[s], a[s - 1] if s >= 1 else neg_inf]
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(a[s - 2])  # skip the blank between two different labels
            new[s] = torch.logsumexp(torch.stack(terms), dim=0) + log_probs[t, ext[s]]
        a = new
    return float(torch.logsumexp(a[-2:], dim=0)) if S > 1 else float(a[0])
    ### END SOLUTION


# %%
arlib.checks.ctc_forward_recursion(ctc_log_prob)

# %% [markdown]
# **Exercise 5.3** (CTC greedy collapse; easy). Greedy CTC decoding takes the most likely symbol of
# every frame and applies the collapse map $\mathcal{B}$ to that path. Write
# `ctc_collapse(frame_labels, blank=0)`, which takes the frame labels as a list of ints and returns
# the transcript as a list of ints: first merge every run of equal consecutive labels into one, then
# remove the blanks, so that with `a`, `b` labels and `_` the blank, "a a _ a b b _" becomes
# "a a b". The check tries paths with and without blanks, blanks only, no frames at all, and a blank
# index other than 0 (where 0 is a real label). Why must the two steps come in this order?

# %%
def ctc_collapse(frame_labels, blank=0):
    """The collapse map B: merge runs of repeated labels, then drop the blanks."""
    ### BEGIN SOLUTION
    transcript, previous = [], None
    for label in frame_labels:
        if label != previous and label != blank:  # the first frame of a run of a real label
            transcript.append(label)
        previous = label
    return transcript
    ### END SOLUTION


# %%
arlib.checks.ctc_greedy_collapse(ctc_collapse)

# %% [markdown]
# **Exercise 5.4** (continuous integrate-and-fire; medium). Write
# `integrate_and_fire(hidden, alpha, threshold=1.0)` with the loop of CIF rather than the overlaps of
# the batched form (4): `hidden` holds the encoder frames $h_t$, shape $(T, d)$, and `alpha`
# their weights $\alpha_t$, shape $(T,)$, each below the threshold $\beta$. Keep a running weight $w$
# and embedding $e$, both starting at 0. At frame $t$, if $w + \alpha_t < \beta$, integrate:
# $w \leftarrow w + \alpha_t$, $e \leftarrow e + \alpha_t h_t$. Otherwise the frame completes the token:
# split $\alpha_t$ into $\alpha_1 = \beta - w$ and $\alpha_2 = \alpha_t - \alpha_1$, fire the token
# $e + \alpha_1 h_t$, and start the next one with $w = \alpha_2$, $e = \alpha_2 h_t$. A token whose
# weight is still below $\beta$ at the end does not fire. Return the fired embeddings, shape $(N, d)$,
# and an empty $(0, d)$ tensor when nothing fires. The check tries
# random weights, frames that land exactly on the threshold, too little weight to fire, $d = 1$ and
# thresholds 0.5 and 2. Why does Paraformer scale $\alpha$ during training so that it sums to the target
# length?

# %%
def integrate_and_fire(hidden, alpha, threshold=1.0):
    """(N, d) embeddings of the tokens that fire: integrate alpha_t h_t, fire each time the weight reaches threshold."""
    ### BEGIN SOLUTION
    weight, embedding, fired = 0.0, torch.zeros_like(hidden[0]), []
    for t in range(hidden.shape[0]):
        a = float(alpha[t])
        if weight + a < threshold:  # integrate
            weight, embedding = weight + a, embedding + a * hidden[t]
        else:  # fire: the part that completes this token, the rest starts the next one
            part = threshold - weight
            fired.append(embedding + part * hidden[t])
            weight = a - part
            embedding = weight * hidden[t]
    if not fired:
        return hidden.new_zeros(0, hidden.shape[1])
    return torch.stack(fired)
    ### END SOLUTION


# %%
arlib.checks.cif_fire(integrate_and_fire)

# %% [markdown]
# ## Summary
#
# - Log-mel features are an STFT, a bank of triangular mel filters and a log, a few lines of torch;
#   SpecAugment hides bands and spans of them to regularize training.
# - An attention encoder-decoder writes one token per decoder call, with greedy or beam search; beam
#   search rarely finds a more probable transcript when the decoder is confident.
# - CTC sums over every frame labelling that collapses to the transcript with the forward recursion in
#   log space (equal to PyTorch's in value and, through the log-softmax, in gradient). Its posteriors are
#   spiky and blank-dominated, greedy decoding is nearly as good as prefix beam search, and yet the
#   single best path holds only a sliver of the probability.
# - Paraformer's continuous integrate-and-fire counts and locates tokens with one weight per frame; fed
#   whole words, its parallel decoder was the most accurate recognizer of the chapter. The glancing
#   sampler bought nothing measurable on a corpus whose words are independent, as theory predicts.
# - CASS-NAT's Viterbi alignment cuts the encoder output into token segments; CTC's spaces count words
#   less reliably than CIF's predictor.
# - Padding is the cost of random batches (length bucketing removes most of it), depth in the decoder is
#   paid once per token, and the speed-up of a non-autoregressive decoder is bounded by the features
#   and the encoder it cannot avoid (Amdahl's law).
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```
