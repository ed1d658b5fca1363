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
# # Non-autoregressive speech recognition: CTC, Paraformer, CASS-NAT and the speed/accuracy trade
#
# Speech recognition maps a waveform to a transcript. An *autoregressive* recognizer writes the
# transcript one token at a time, each conditioned on the audio and on the tokens before it, exactly
# like chapter 1's GPT with an extra input: $p(y \mid x) = \prod_u p(y_u \mid y_{<u}, x)$. That is
# accurate and slow: one decoder call per token. A *non-autoregressive* recognizer predicts all
# tokens at once. CTC {cite}`graves2006connectionist` does it by labelling every audio frame and
# collapsing the labels; Paraformer {cite}`gao2022paraformer` first counts and locates the tokens with a
# continuous integrate-and-fire predictor, then decodes them all in one pass; CASS-NAT
# {cite}`fan2021cassnat` cuts the audio into one segment per token with a CTC alignment and decodes the
# segments in one pass. This chapter builds all of them on one trained acoustic encoder, beside an
# autoregressive baseline decoded the way strong systems decode it, and measures what the speed costs in
# accuracy, on clean, noisy, reverberant, sped-up and real speech.
#
# **You will learn**
# - speech features from scratch: the short-time Fourier transform, mel filters, log-mel frames, and
#   SpecAugment's masks {cite}`park2019specaugment`, with their effect measured;
# - an attention encoder-decoder (LAS {cite}`chan2016listen`; with Transformer layers {cite}`vaswani2017attention`,
#   Speech-Transformer {cite}`dong2018speech`) trained jointly with CTC on a shared encoder (hybrid
#   CTC/attention, {cite}`kim2017joint,watanabe2017hybrid`), with greedy and beam search, and what
#   goes wrong when its attention loses its place;
# - CTC: the loss by the forward algorithm in log space (equal to PyTorch's in value, and in gradient
#   through the log-softmax), greedy, prefix beam {cite}`hannun2014first` and lexicon-constrained
#   decoding, and CTC's blank-dominated, spiky posteriors;
# - decoding CTC and attention together: attention rescoring of CTC's n-best (WeNet's U2,
#   {cite}`zhang2020unified,yao2021wenet`) and one-pass joint CTC/attention beam search
#   {cite}`watanabe2017hybrid`;
# - Paraformer: continuous integrate-and-fire, the quantity loss, the parallel decoder and the
#   glancing sampler, with an ablation of each part;
# - CASS-NAT: token-level acoustic embeddings cut by a CTC alignment, a parallel decoder, error-based
#   alignment sampling {cite}`fan2021improved`, and what a perfect alignment would buy;
# - how to compare recognizers fairly: the same test words, the same encoder, bootstrap intervals, and
#   a real-time factor measured at batch 1 and batched, against output length.
#
# **The data** are speech synthesized offline by `espeak-ng`: sequences of 1 to 8 words from a
# 40-word vocabulary (digits, numbers, commands) spoken by espeak-ng's English accents combined with voice
# variants, at random speeds and pitches. The three splits are held out from each other: the *train*,
# *dev* and *test* voices use different voice variants, no variant is a near-copy of one in another split
# (espeak-ng's `steph2` is `steph` with one formant changed, so the two may not be split apart), the
# Caribbean accent is heard only in test, and every word sequence belongs to one split only. Every choice
# below (a weight, a beam, a threshold) is made on the dev split; the test split is scored once.
# Synthesized speech is clean, fluent and read by machines with a handful of vocal tracts, so it cannot
# teach what real recordings do (section 8 ends with a few real ones).
#
# **The models** share one acoustic encoder (two convolutions that halve the frame rate to 50 frames a
# second, then six transformer layers of width 64), trained from scratch by `python -m arlib.recipes
# speech-hybrid` under the hybrid loss $0.3\,\mathcal L_\text{CTC} + 0.7\,\mathcal L_\text{attention}$: a
# CTC head and a two-layer attention decoder over characters on top of it. The other heads were trained
# on top of the *frozen* encoder, each with two transformer layers: an attention decoder over words, a CTC
# head over words, the two Paraformer decoders and CASS-NAT. Real systems train each model end to end;
# sharing the encoder keeps the book's checkpoints small and makes every comparison below a comparison of
# decoders that hear exactly the same representation, with matched decoder compute.

# %% [markdown]
# ![Three decoders on one encoder](../../figures/diagrams/05-speech-decoders.svg)
#
# *Figure.* CTC labels every frame and collapses; Paraformer counts and places tokens with CIF, then decodes them in one pass; the attention decoder writes one token at a time. (CASS-NAT, section 6, places its tokens with CTC's alignment instead of CIF.)

# %%
import math
import statistics
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import arlib
import arlib.checks
from arlib.data import DEV_VOICES, TEST_VOICES, TRAIN_VOICES, spoken_utterances
from arlib.data.speech import HELD_OUT_ACCENTS, transcript_split
from arlib.env import check_timing
from arlib.speech.audio import log_mel, mel_filterbank, spec_augment
from arlib.speech.ctc import ctc_forward, greedy_decode, prefix_beam_search, token_segments, viterbi_align
from arlib.speech.decoding import attention_rescore, joint_beam_search, lexicon_beam_search, snap_to_lexicon
from arlib.speech.error_rates import (char_error_rate, edit_distance, wer_difference, wer_interval,
                                      word_error_counts, word_error_rate)
from arlib.speech.models import EOS, AttentionDecoder, TranscriptVocab, speech_features
from arlib.speech.paraformer import cif

device = arlib.setup(seed=0)
test_set, dev_set = spoken_utterances("test", n=400), spoken_utterances("dev", n=400)
vocab = TranscriptVocab()  # characters: the hybrid model's CTC head and attention decoder
word_vocab = TranscriptVocab(unit="word")  # whole words: the heads on the frozen encoder
names = ["speech-hybrid", "speech-hybrid-nospecaug", "speech-aed-words", "speech-ctc-words", "speech-paraformer",
         "speech-paraformer-noglance", "speech-cass-nat"]
loaded = {name: arlib.load(name, device) for name in names}  # each checked against its sidecar's sha256
hybrid = loaded["speech-hybrid"].model
ctc_model, aed, encoder = hybrid.ctc, hybrid.decoder, hybrid.encoder
aed_words, ctc_words, para, para_ng, cass = (loaded[n].model for n in names[2:])
meta = {name: c.meta for name, c in loaded.items()}
refs, dev_refs = [u.transcript for u in test_set], [u.transcript for u in dev_set]
print(f"device {device}; trained on {meta['speech-hybrid']['data']['train']['n']:,} utterances of "
      f"{len(TRAIN_VOICES)} voices; {len(dev_set)} dev utterances by {len(DEV_VOICES)} other voices; "
      f"{len(test_set)} test utterances ({sum(u.duration for u in test_set) / 60:.1f} min) by "
      f"{len({u.voice for u in test_set})} of the {len(TEST_VOICES)} test voices")
print(f"{len(vocab.words)} words, {vocab.size - 2} characters + blank + end")
for name, m in meta.items():
    print(f"{name:>27}: {m['parameters']:>7,} parameters, {m['wall_seconds']:5.0f} s to train, "
          f"dev WER {m['metrics']['dev_wer']:.3f}")
heard = set(TRAIN_VOICES) | set(DEV_VOICES)
assert not heard & {u.voice for u in test_set}  # unseen speakers ...
assert all(transcript_split(u.words) == "test" for u in test_set)  # ... saying sentences no other split has
assert {v.split("+")[0] for v in heard}.isdisjoint(HELD_OUT_ACCENTS)  # and an accent never heard


def sync():
    """Wait for the accelerator before reading the clock (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def encode(utterances):
    """Features and the shared encoder for a batch: memory (B, T', d) and its lengths (B,)."""
    feats, lengths = speech_features([u.waveform for u in utterances])
    return encoder(feats.to(device), lengths.to(device))


def batched(utterances, size=50):
    return [utterances[i:i + size] for i in range(0, len(utterances), size)]


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
# spans of frames, so that the model cannot lean on any one of them. The hybrid encoder was trained with
# two bands of up to 10 channels and two spans of up to 5 % of the frames (the figure doubles the
# spans to make them visible); `speech-hybrid-nospecaug` is the same recipe without the masks, and the
# cell after the figure measures what they buy.

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

# %%
@torch.no_grad()
def hybrid_greedy(model, utterances):
    """A hybrid model's two greedy transcripts of a batch: (CTC's, the attention decoder's)."""
    feats, lengths = speech_features([u.waveform for u in utterances])
    memory, out_lengths = model.encoder(feats.to(device), lengths.to(device))
    log_probs = model.ctc.head(memory).log_softmax(-1)
    return ([vocab.decode(ids) for ids in greedy_decode(log_probs, out_lengths)],
            [vocab.decode(ids) for ids in model.decoder.greedy(memory, out_lengths)[0]])


specaug = {}
for label, model in [("with SpecAugment", hybrid), ("without", loaded["speech-hybrid-nospecaug"].model)]:
    for split, utts in [("dev", dev_set), ("test", test_set)]:
        outs = [hybrid_greedy(model, chunk) for chunk in batched(utts)]
        specaug[label, split] = [sum((o[k] for o in outs), []) for k in (0, 1)]  # CTC, attention
for k, head in enumerate(["CTC greedy", "attention greedy"]):
    cells = []
    for split, split_refs in [("dev", dev_refs), ("test", refs)]:
        gap = wer_difference(split_refs, specaug["with SpecAugment", split][k], specaug["without", split][k])
        cells.append(f"{split} {word_error_rate(split_refs, specaug['with SpecAugment', split][k]):.3f} vs "
                     f"{word_error_rate(split_refs, specaug['without', split][k]):.3f} "
                     f"(difference {gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}])")
    print(f"{head:>17}, with vs without SpecAugment: " + "; ".join(cells))
specaug_gap = {(split, k): wer_difference(split_refs, specaug["with SpecAugment", split][k], specaug["without", split][k])
               for split, split_refs in [("dev", dev_refs), ("test", refs)] for k in (0, 1)}
by_variant = {}
for u, r, h in zip(dev_set, dev_refs, specaug["with SpecAugment", "dev"][1]):
    by_variant.setdefault(u.voice.split("+")[1], []).append((r, h))
variant_wer = {v: word_error_rate(*zip(*rows)) for v, rows in by_variant.items()}
print("dev attention WER by voice variant: " + ", ".join(f"{v} {w:.3f}" for v, w in variant_wer.items()))
assert set(sorted(variant_wer, key=variant_wer.get)[-2:]) == {"zac", "travis"}  # the two hard dev voices
assert all(specaug_gap["dev", k][2] < 0 for k in (0, 1))  # dev: SpecAugment helps both heads ...
assert all(specaug_gap["test", k][1] < 0 < specaug_gap["test", k][2] for k in (0, 1))  # ... test: not resolved


# %% [markdown]
# On the dev voices SpecAugment cuts the WER of the CTC head by over a fifth and of the attention decoder
# by over a third, and both paired intervals exclude zero. On the test voices the differences are small and their intervals include zero, so no
# difference is claimed there. The dev and test voices differ: the dev split's four variants include two
# that every model finds hard (`zac` and `travis`), and a regularizer pays most where the voice is
# furthest from training. Every model below sits on the encoder trained with SpecAugment.


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
# recover from an early choice that looked best locally. The book has two such decoders. The hybrid
# model's own decoder writes characters (the usual choice for an open vocabulary, about 24 steps for a
# mean transcript here: 23 characters and the end token); it was trained together with the encoder, so the
# encoder learnt what the decoder needs, as in every hybrid CTC/attention system. The second decoder writes
# whole words from the closed 40-word vocabulary (about 5 steps), on the frozen encoder. The *real-time
# factor* (RTF) is processing time over audio duration: 0.01 means a second of speech takes 10 ms. We
# measure it in section 8. (The dev WERs printed at the top are the recipes' own, measured at the end of
# training: CTC's for the hybrid models, the attention decoder's is in their sidecars too.)

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
assert wer_aed < 0.12 and wer_aed_words < 0.12  # both get most words of unseen voices right
assert sum(g < -1e-6 for g in gains) <= 2 and wer_beam_100 <= wer_greedy_100  # beam search: rarely worse ...
assert sum(abs(g) <= 1e-6 for g in gains) >= 80  # ... and mostly the same transcript: the decoder is confident


# %% [markdown]
# **When attention loses its place.** An attention decoder has no notion of where in the audio it is,
# other than what its cross-attention finds: nothing forces it to move forward through the frames,
# once per word. When it jumps, it skips a word, says one twice, or says words out of order. Below, the
# first test utterance where the greedy character decoder wrote the right words in the wrong order (or,
# failing that, the first with a missing or repeated word), and the cross-attention of its last layer
# while it wrote them (averaged over heads): each row is an output character, each column an encoder frame.

# %%
def cross_attention_map(decoder, memory, lengths, ids):
    """The last layer's cross-attention (U + 1, S), mean over heads, teacher-forced on (<s>, ids)."""
    captured = {}
    cross = decoder.blocks[-1].cross

    def hook(module, inputs, output):
        x, (k, _), mask = inputs  # x (1, U+1, d) normalized stream; k (1, H, S, D)
        d, H = x.shape[-1], k.shape[1]
        q = F.linear(x, module.c_attn.weight[:d], module.c_attn.bias[:d]).view(1, -1, H, d // H).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // H)  # (1, H, U+1, S)
        captured["weights"] = scores.masked_fill(~mask, -math.inf).softmax(-1).mean(1)[0]

    handle = cross.register_forward_hook(hook)
    try:
        with torch.no_grad():
            decoder(torch.tensor([[EOS] + ids], device=device), memory, lengths)
    finally:
        handle.remove()
    return captured["weights"].cpu()


def reordered(ref, hyp):
    return sorted(ref.split()) == sorted(hyp.split()) and ref != hyp


picks = [i for i, (r, h) in enumerate(zip(refs, aed_greedy)) if reordered(r, h)]
kind = "the right words, in the wrong order"
if not picks:
    picks = [i for i, (r, h) in enumerate(zip(refs, aed_greedy)) if len(r.split()) != len(h.split())]
    kind = "a missing or repeated word"
example = picks[0]
memory, lengths = encode([test_set[example]])
hyp_ids = vocab.encode(aed_greedy[example], strict=False)
weights = cross_attention_map(aed, memory, lengths, hyp_ids)
fig, ax = plt.subplots(figsize=(7, 3.2), dpi=80)
ax.imshow(weights, aspect="auto", cmap="viridis", origin="upper")
ax.set_yticks(range(len(hyp_ids) + 1), [c if c != " " else "␣" for c in aed_greedy[example]] + ["</s>"], fontsize=6)
ax.set(xlabel="encoder frame (20 ms)", ylabel="output character")
ax.set_title(f"said {refs[example]!r}\nwrote {aed_greedy[example]!r}", fontsize=9)
arlib.export_figure(fig, "aed-attention-error")  # into figures/ when `make execute` runs
plt.show()
peaks = weights[:-1].argmax(-1)  # the frame each character attends to most
backward = int((peaks[1:] < peaks[:-1] - 3).sum())  # jumps back by more than 3 frames (60 ms)
n_reordered = sum(reordered(r, h) for r, h in zip(refs, aed_greedy))
print(f"utterance {example}, {kind}: said {refs[example]!r}, wrote {aed_greedy[example]!r}; the attention "
      f"jumps back {backward} times while writing it")
print(f"{n_reordered} of {len(refs)} greedy transcripts have the right words in the wrong order")
assert n_reordered <= 4 and backward >= 3  # reorderings are rare; losing its place in the audio is not

# %% [markdown]
# This decoder almost never swaps words. Its characteristic failure is to lose its place: the
# attention jumps back to frames it has already read, and the decoder writes a word again or runs on
# past the end of the audio, writing fragments until it happens to say the end token. Section 4 shows
# two ways to stop that without retraining.


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
# states meet, so we use $-10^{30}$. Below, eq. (3) on the hybrid model's CTC head's output for a real
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
# label extends the prefix only after a blank. Here they differ on a fifth of the transcripts but not in
# WER. CTC's posteriors are
# *spiky*: over half the frames are blank at their argmax, four frames in five put more than 0.9 on one
# symbol, and each character is a sharp peak, as the picture shows. The paths that compete with the
# best one mostly move a spike by a frame, and they collapse to the same transcript (section 6 measures
# how much probability they hold). This CTC head is far less accurate than the attention decoder on the same
# encoder: it spells most characters right (its CER is under 8 %) but one wrong letter makes a wrong
# word.

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
assert blank_frames / frames > 0.5 and confident / frames > 0.75  # spiky, blank-dominated posteriors
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
# **The same words for every row.** A character CTC model can spell words that do not exist, and every
# misspelling is a wrong word, while a word-level decoder can only choose among the 40. To compare them
# on the same footing, three ways to give CTC the vocabulary: snap each word of the greedy transcript
# to the nearest vocabulary word by edit distance (a post-processing step, no search); search with a
# *lexicon*: prefix beam search that may only extend a prefix into a spelling of vocabulary words, so a
# space may only follow a complete word (a prefix tree of the 40 words); or a CTC head over whole words
# (`speech-ctc-words`, two transformer layers and a linear layer on the frozen encoder, 42 outputs).

# %%
@torch.no_grad()
def ctc_word_posteriors(utterances):
    memory, lengths = encode(utterances)
    return ctc_words(memory, lengths)


ctc_snapped = [snap_to_lexicon(h, vocab.words) for h in ctc_greedy]
ctc_lexicon = []
for chunk in batched(test_set):
    lp, lens = ctc_posteriors(chunk)
    ctc_lexicon += [vocab.decode(lexicon_beam_search(lp[b, :n].cpu(), vocab, beam=8)[0][0])
                    for b, n in enumerate(lens.tolist())]
ctc_word_greedy = [word_vocab.decode(ids) for chunk in batched(test_set)
                   for ids in greedy_decode(*ctc_word_posteriors(chunk))]
ctc_rows = {"CTC chars, greedy": ctc_greedy, "CTC chars, greedy, snapped": ctc_snapped,
            "CTC chars, lexicon beam 8": ctc_lexicon, "CTC words, greedy": ctc_word_greedy}
for name, hyps in ctc_rows.items():
    low, high = wer_interval(refs, hyps)[1:]
    print(f"{name:>27}: WER {word_error_rate(refs, hyps):.3f} [{low:.3f}, {high:.3f}]; "
          f"{sum(w not in vocab.words for h in hyps for w in h.split())} non-words")
assert all(w in vocab.words for h in ctc_lexicon + ctc_snapped + ctc_word_greedy for w in h.split())
non_words = sum(w not in vocab.words for h in ctc_greedy for w in h.split())
ctc_errors = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, ctc_greedy))
assert non_words > 0.5 * ctc_errors  # most of CTC's word errors are misspellings ...
for name in ("CTC chars, greedy, snapped", "CTC chars, lexicon beam 8", "CTC words, greedy"):
    assert wer_difference(refs, ctc_rows[name], ctc_greedy)[2] < 0  # ... so each way of knowing the words helps
assert wer_difference(refs, ctc_lexicon, ctc_snapped)[2] < 0  # searching with the lexicon beats snapping after


# %% [markdown]
# Knowing the words changes CTC completely. Over half of its word errors are non-words; snapping
# each to the nearest vocabulary word removes well over half of its errors, and searching with the
# lexicon removes nine in ten: the lexicon beam scores spellings that the frames support, while snapping
# repairs one spelling after the fact. The CTC head over whole words lies between the two. So a
# character model's WER without a lexicon says as much about its spelling as about its hearing, and
# every character row of the final table is given the lexicon (or compared with one that has it).

# %% [markdown]
# ## 4. CTC and attention together
#
# The two heads of the hybrid model fail differently. CTC moves through the frames monotonically, one
# spike per character, so it cannot skip or repeat a word without the audio saying so, but each
# character is chosen alone and it misspells. The attention decoder spells well, since it conditions on
# the characters before, but it can lose its place. Watanabe et al. {cite}`watanabe2017hybrid` combine them
# when decoding as well as in training. Two ways are standard:
#
# - **Attention rescoring** (WeNet's U2 {cite}`zhang2020unified,yao2021wenet`): CTC's prefix beam search
#   proposes its $n$ best transcripts with their probabilities $\log p_\text{ctc}(y \mid x)$; the attention
#   decoder scores each in one teacher-forced pass, $\log p_\text{att}(y \mid x) = \sum_u \log
#   p(y_u \mid y_{<u}, x) + \log p(\texttt{</s>} \mid y, x)$, all $n$ together as one batch; the best
#   $\lambda \log p_\text{ctc} + (1 - \lambda) \log p_\text{att}$ wins. The decoder never searches, so it
#   cannot lose its place; CTC's candidates are spelled by frames, so no word is skipped. WeNet's
#   candidates come from the unconstrained prefix beam search; the book also rescores the lexicon beam's
#   $n$ best, which are spelled correctly by construction.
# - **Joint beam search** {cite}`watanabe2017hybrid`: the attention decoder's beam search, with every
#   prefix $h$ scored by $\lambda \log p_\text{ctc}(h \ldots \mid x) + (1 - \lambda) \log p_\text{att}(h \mid x)$,
#   where $p_\text{ctc}(h \ldots \mid x)$ is the CTC probability of all transcripts that *begin* with $h$:
#   the prefix score, computed by a forward recursion over the frames for each candidate extension (and
#   for $\texttt{</s>}$, the probability of $h$ as the whole transcript). A prefix that jumps ahead in the
#   audio or repeats a word has a tiny CTC prefix score and falls out of the beam.
#
# `arlib.speech.decoding` implements both. Rescoring's weight $\lambda$ is chosen on the dev split. (The
# convex form is the book's: WeNet adds $w \log p_\text{ctc}$ to the attention score, which ranks as
# $\lambda = w / (1 + w)$, so its default $w = 0.5$ is $\lambda = 1/3$ here.) Joint search uses
# $\lambda = 0.3$, the weight the hybrid model was trained with, untuned. Joint
# search runs one utterance at a time and is the slowest recognizer of the chapter, so it is scored in
# section 8's table, on the 200 utterances every recognizer transcribes; here it is shown on one.

# %%
@torch.no_grad()
def ctc_and_memory(utterances):
    """Memory (B, T', d), lengths (B,) and the CTC head's log-probabilities (B, T', C) of a batch."""
    memory, lengths = encode(utterances)
    return memory, lengths, ctc_model.head(memory).log_softmax(-1)


@torch.no_grad()
def rescoring_candidates(utterances, lexicon=False, nbest=8):
    """Per utterance: CTC's n-best (prefix or lexicon beam) with their CTC and attention log-probabilities."""
    out = []
    for chunk in batched(utterances):
        memory, lengths, lp = ctc_and_memory(chunk)
        for b, n in enumerate(lengths.tolist()):
            hyps = lexicon_beam_search(lp[b, :n].cpu(), vocab, beam=nbest) if lexicon \
                else prefix_beam_search(lp[b, :n].cpu(), beam=nbest)
            scored = attention_rescore(aed, memory[b:b + 1], lengths[b:b + 1], hyps, ctc_weight=0.5)
            out.append([(ids, ctc, att) for ids, _, ctc, att in scored])  # the weight is applied below
    return out


def rescored(candidates, weight):
    return [vocab.decode(list(max(c, key=lambda h: weight * h[1] + (1 - weight) * h[2])[0])) for c in candidates]


weights = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
best_weight, rescored_test, test_candidates = {}, {}, {}
for lexicon in (False, True):
    dev_candidates = rescoring_candidates(dev_set[:200], lexicon)
    dev_wer = {w: word_error_rate(dev_refs[:200], rescored(dev_candidates, w)) for w in weights}
    best_weight[lexicon] = min(weights, key=lambda w: (round(dev_wer[w], 4), abs(w - 0.5)))  # ties: nearest 0.5
    print(f"{'lexicon' if lexicon else 'prefix'} beam 8-best, dev WER by CTC weight: "
          + ", ".join(f"{w}: {e:.3f}" for w, e in dev_wer.items()) + f" -> {best_weight[lexicon]}")
    test_candidates[lexicon] = rescoring_candidates(test_set[:200], lexicon)
    rescored_test[lexicon] = rescored(test_candidates[lexicon], best_weight[lexicon])
hybrid_rows = {"AED chars, greedy": aed_greedy[:200], "CTC chars, prefix beam 8": rescored(test_candidates[False], 1.0),
               "CTC chars, lexicon beam 8": ctc_lexicon[:200],
               "AED rescoring prefix 8-best": rescored_test[False], "AED rescoring lexicon 8-best": rescored_test[True]}
for name, hyps in hybrid_rows.items():
    low, high = wer_interval(refs[:200], hyps)[1:]
    counts = word_error_counts(refs[:200], hyps)
    print(f"{name:>29}: WER {word_error_rate(refs[:200], hyps):.3f} [{low:.3f}, {high:.3f}], S/D/I "
          f"{counts['substitutions']}/{counts['deletions']}/{counts['insertions']} (first 200 test utterances)")
in_list = {lexicon: statistics.mean(float(any(vocab.decode(list(ids)) == r for ids, _, _ in c))
                                    for c, r in zip(test_candidates[lexicon], refs))
           for lexicon in (False, True)}
print(f"the right transcript is among the 8 candidates for {in_list[False]:.0%} (prefix beam) and "
      f"{in_list[True]:.0%} (lexicon beam) of the utterances")
rescoring_gap = {lexicon: wer_difference(refs[:200], rescored_test[lexicon], aed_greedy[:200]) for lexicon in (False, True)}
assert rescoring_gap[True][2] < 0  # rescoring the lexicon's candidates beats greedy attention decoding ...
assert rescoring_gap[False][1] > 0  # ... rescoring the prefix beam's is worse than greedy attention ...
assert in_list[True] > in_list[False] + 0.2  # ... because the right transcript is often not among them


# %%
@torch.no_grad()
def transcribe_joint(utterances, beam=4, weight=0.3):
    out = []
    for chunk in batched(utterances):
        memory, lengths, lp = ctc_and_memory(chunk)
        out += [vocab.decode(list(joint_beam_search(aed, memory[b:b + 1], lengths[b:b + 1], lp[b, :n].cpu(),
                                                    beam=beam, ctc_weight=weight)[0][0]))
                for b, n in enumerate(lengths.tolist())]
    return out


worst = max(range(200), key=lambda i: edit_distance(refs[i].split(), aed_greedy[i].split()))
joint_example = transcribe_joint([test_set[worst]])[0]
print(f"said             {refs[worst]!r}\ngreedy AED wrote {aed_greedy[worst]!r}\njoint search     {joint_example!r}")
assert edit_distance(refs[worst].split(), joint_example.split()) < edit_distance(refs[worst].split(),
                                                                                 aed_greedy[worst].split())


# %% [markdown]
# Rescoring is only as good as its candidates. WeNet's candidates, the prefix beam's 8 best, hold the
# right transcript for only about 60 % of these utterances, because this CTC head misspells; the
# attention decoder then picks the least bad misspelling, and the result is worse than the decoder's own
# greedy search. The lexicon beam's candidates hold the right transcript almost always, and the decoder
# picks it: the WER falls by a factor of about six from greedy attention decoding, on the same encoder and
# the same decoder, with no training. Joint search needs no lexicon: the CTC prefix score stops the
# greedy decoder's worst failure, a runaway loop that keeps writing after the audio has ended (above;
# section 8 scores it on 200 utterances). The autoregressive baseline of this chapter is therefore not
# greedy attention decoding but these two.
#
#
# ## 5. Paraformer: count the tokens, then decode them all at once
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
# **What each part buys.** Beside the two CTC heads, four Paraformer rows share the encoder: Paraformer
# trained with the glancing sampler, Paraformer trained without it, and each of them given the true
# number of tokens (an oracle that shows what counting errors cost). The paper also fine-tunes with a
# minimum word error rate loss; the book leaves that out. The glancing language-model sampler
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
print(f"{'CTC chars (same encoder)':>28} {wer_ctc:6.3f} {char_error_rate(refs, ctc_greedy):6.3f}")
print(f"{'CTC words (same encoder)':>28} {word_error_rate(refs, ctc_word_greedy):6.3f} "
      f"{char_error_rate(refs, ctc_word_greedy):6.3f}")
for name, hyps in para_out.items():
    print(f"{'Paraformer, ' + name:>28} {para_wer[name]:6.3f} {char_error_rate(refs, hyps):6.3f}")
print(f"token count exactly right: {count_exact['glancing']:.1%} (glancing), {count_exact['no glancing']:.1%} "
      f"(no glancing)")
for a, b in [("glancing", "no glancing"), ("glancing", "glancing, oracle count")]:
    gap = wer_difference(refs, para_out[a], para_out[b])
    print(f"Paraformer {a} - {b}: {gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}]")
para_vs_ctc_words = wer_difference(refs, para_out["glancing"], ctc_word_greedy)
print(f"Paraformer - CTC words: {para_vs_ctc_words[0]:+.3f} [{para_vs_ctc_words[1]:+.3f}, {para_vs_ctc_words[2]:+.3f}]")
assert count_exact["glancing"] > 0.9  # the predictor counts the words of unseen voices
assert para_wer["glancing, oracle count"] <= para_wer["glancing"]  # counting errors cost a little ...
assert para_wer["glancing"] - para_wer["glancing, oracle count"] < 0.01  # ... under a point
glance_gap = wer_difference(refs, para_out["glancing"], para_out["no glancing"])
assert glance_gap[1] < 0 < glance_gap[2]  # glancing: no difference resolved here (see below)
assert para_vs_ctc_words[1] < 0 < para_vs_ctc_words[2]  # Paraformer and the word CTC head: none either
assert para_wer["glancing"] < wer_ctc / 3  # words, counted by CIF, against characters spelled frame by frame

# %% [markdown]
# Three things stand out. Paraformer over words is far more accurate than CTC over characters on the same
# encoder, but that is mostly a comparison of units: against the CTC head over the same words, the paired
# interval of the difference includes zero, so no difference is claimed. The predictor counts the words
# right about 92 % of the time, and an oracle count removes only a fraction of a point of WER. And the
# glancing sampler buys nothing measurable (the paired interval includes zero). That is what one would
# expect *for this corpus*: its word sequences are drawn independently and uniformly, so a token's
# neighbours say nothing about it, and a decoder trained to use them has nothing to use. Glancing is for
# real speech, where words depend on each other.


# %% [markdown]
# ## 6. CASS-NAT: decoding the segments of a CTC alignment
#
# CASS-NAT {cite}`fan2021cassnat` takes the token count and positions from CTC rather than from a
# separate predictor. During training it aligns the transcript to the frames with the *Viterbi* path, the
# single most probable path through eq. (3)'s trellis (maximum instead of sum), and cuts the encoder
# output into one segment per token. Here is the alignment of a test utterance's characters under the
# hybrid model's CTC head. Spiky as the posteriors are, the best path is far from the only one: paths
# that move a character's first or last frame by one are nearly as probable, and together they outweigh
# it more than tenfold. That is why CTC's loss sums over paths, and why an alignment is a good
# segmentation rather than *the* alignment.

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
print(f"the best path has log-probability {viterbi_score:.3f}, all paths of the transcript together "
      f"{all_paths:.3f}: the best path holds {best_share:.1%} of the transcript's probability")
assert best_share < 0.1  # many paths share the mass: they differ in the frames where a spike starts and ends

# %% [markdown]
# **The decoder.** CASS-NAT turns each token's segment into a *token-level acoustic embedding*: a query
# for position $u$ (the sinusoidal encoding of $u$) attends only to the frames of token $u$'s segment (the
# *trigger mask*), and a parallel decoder reads all the embeddings at once, with self-attention across
# tokens and cross-attention to the whole encoder output. Following the authors' code, a token's
# segment runs from the frame after the previous token's first frame up to its own first frame (the
# blanks before its spike, and the spike), widened by one frame on each side as in the improved
# CASS-NAT {cite}`fan2021improved`; the frames after the last token form one more position, trained to
# say "end". The book's CASS-NAT works on words, like its Paraformer, and takes its alignments from the CTC
# head over words (`speech-ctc-words`). Training cuts the memory with the Viterbi alignment of the true
# transcript. At inference there is no transcript: the segments come from CTC's best path, which also
# fixes how many words are written. To train the decoder on boundaries like those, the paper's
# error-based sampled alignment (ESA: frames where CTC is sure keep their label, the others draw one of
# their two most probable, the paper's way of proposing alternatives at inference) replaces the Viterbi
# alignment for half of the training utterances, when it has the right number of words (the book's
# variant: the paper samples at inference only). The oracle row decodes the test set with the Viterbi
# segments of the true transcripts: it shows what a perfect aligner would buy.

# %%
from arlib.speech.cass_nat import forced_segments  # noqa: E402


@torch.no_grad()
def transcribe_cass(utterances, oracle=False):
    memory, lengths = encode(utterances)
    log_probs, _ = ctc_words(memory, lengths)
    if not oracle:
        return [word_vocab.decode(ids) for ids in cass.decode(memory, lengths, log_probs)]
    targets, target_lengths = word_vocab.batch([u.transcript for u in utterances])
    segments = forced_segments(log_probs, lengths, targets.to(device), target_lengths.to(device))
    return [word_vocab.decode(ids) for ids in cass.decode_with_segments(memory, lengths, segments)]


cass_out = {"CASS-NAT": [t for chunk in batched(test_set) for t in transcribe_cass(chunk)],
            "CASS-NAT, oracle alignment": [t for chunk in batched(test_set) for t in transcribe_cass(chunk, True)]}
cass_wer = {name: word_error_rate(refs, hyps) for name, hyps in cass_out.items()}
cass_count_exact = statistics.mean(float(len(h.split()) == len(r.split())) for h, r in zip(cass_out["CASS-NAT"], refs))
ctc_words_count_exact = statistics.mean(float(len(h.split()) == len(r.split())) for h, r in zip(ctc_word_greedy, refs))
for name, hyps in [("CTC words, greedy (the aligner)", ctc_word_greedy), *cass_out.items(),
                   ("Paraformer words", para_out["glancing"])]:
    low, high = wer_interval(refs, hyps)[1:]
    print(f"{name:>32}: WER {word_error_rate(refs, hyps):.3f} [{low:.3f}, {high:.3f}]")
print(f"word count exactly right: CASS-NAT {cass_count_exact:.1%} (CTC's best path), Paraformer "
      f"{count_exact['glancing']:.1%} (CIF)")
memory, lengths = encode(test_set[:50])
log_probs, _ = ctc_words(memory, lengths)
with torch.no_grad():  # one decoder position per token of CTC's best path (a position may still say "end")
    assert [len(ids) for ids in cass.decode(memory, lengths, log_probs)] == \
        [len(ids) for ids in greedy_decode(log_probs, lengths)]
gap = wer_difference(refs, cass_out["CASS-NAT"], cass_out["CASS-NAT, oracle alignment"])
print(f"CASS-NAT - oracle alignment: {gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}]")
assert gap[1] > 0  # a perfect alignment would remove most of CASS-NAT's errors
cass_vs_para = wer_difference(refs, cass_out["CASS-NAT"], para_out["glancing"])
print(f"CASS-NAT - Paraformer: {cass_vs_para[0]:+.3f} [{cass_vs_para[1]:+.3f}, {cass_vs_para[2]:+.3f}]")
assert cass_vs_para[1] < 0 < cass_vs_para[2]  # CASS-NAT and Paraformer: no difference resolved
cass_vs_aligner = wer_difference(refs, cass_out["CASS-NAT"], ctc_word_greedy)
print(f"CASS-NAT - CTC words: {cass_vs_aligner[0]:+.3f} [{cass_vs_aligner[1]:+.3f}, {cass_vs_aligner[2]:+.3f}]")
assert cass_vs_aligner[1] < 0 < cass_vs_aligner[2]  # nor against its own aligner
assert cass_count_exact < count_exact["glancing"] - 0.05  # CTC's best path counts words worse than CIF

# %% [markdown]
# CASS-NAT lands beside Paraformer and beside its own aligner, the CTC head over words: the paired
# intervals include zero. Its weak point is the one its design predicts. The alignment fixes the number
# of words, and CTC's best path gets it right for fewer utterances than CIF's predictor does; given the
# true alignment, the same decoder makes about a third of the errors. (The paper's own answer at
# inference is to sample several alignments and let an autoregressive model choose; the book leaves
# that to the reader.)


# %% [markdown]
# ## 7. Where an encoder-decoder's time goes
#
# Two habits of efficient encoder-decoder systems can be measured here. Both are findings of Żelasko et
# al. {cite}`zelasko2025training` on large encoder-decoder speech models: random mini-batches spend much of
# their compute on padding, and moving parameters from the decoder into the encoder speeds up inference.
# **Batching**: utterances in a batch are padded to the longest, and the padding is computed and thrown
# away. Sorting by length and batching neighbours (length bucketing) removes most of it; on a CPU, where
# time follows the arithmetic, that saves time. The book's recipes train this way too: each batch is a run
# of neighbours in the length-sorted training set, from a random start (`arlib.speech.recipes.bucketed_batch`).
# **Depth**: the encoder runs once per utterance, all frames in parallel; the decoder runs $U + 1$ times in
# sequence, one token each. At batch 1 with small layers, time follows the number of sequential calls more
# than the arithmetic, so a layer moved into the encoder is paid once instead of $U + 1$ times.

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
# For depth we build models with the same eight layers split three ways and time greedy decoding forced
# to the test set's mean transcript length, the best of three interleaved rounds. The models are
# untrained: the time of a forward pass does not depend on the values of the weights, only on their shapes
# and on the number of steps, which we fix. (Section 8 times the trained models, against the length of
# what they write.)

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
# ## 8. One table: accuracy against speed on unseen voices
#
# Every recognizer transcribes the same 200 test utterances one at a time (batch 1, the latency a user
# feels), features included, interleaved so that they share the machine's state; the real-time factor is
# total time over total audio. A last row times only what every recognizer pays before it decodes
# anything: the features and the shared encoder. Every row is scored on the same words: the word-level
# heads choose among the 40 words, the character rows spell them. Each WER comes with a 95 % bootstrap
# interval over the utterances and its errors split into substitutions, deletions and insertions (S/D/I);
# two recognizers are compared by a *paired* bootstrap, both scored on the same resampled utterances
# (Bisani and Ney {cite}`bisani2004bootstrap`), and a difference is claimed only when its interval
# excludes zero. The oracle row (CASS-NAT given the true alignment) is not a recognizer: it shows what a
# perfect alignment would buy.

# %%
def ctc_chars(u, beam=None, lexicon=False):
    lp, lens = ctc_posteriors([u])
    if beam is None:
        return vocab.decode(greedy_decode(lp, lens)[0])
    search = lexicon_beam_search(lp[0].cpu(), vocab, beam=beam) if lexicon else prefix_beam_search(lp[0].cpu(), beam=beam)
    return vocab.decode(list(search[0][0]))


recognizers = {
    "AED chars, greedy": lambda u: transcribe_aed([u])[0],
    "AED chars, beam 4": lambda u: transcribe_aed([u], beam=4)[0],
    "AED chars, rescoring prefix 8-best": lambda u: rescored(rescoring_candidates([u]), best_weight[False])[0],
    "AED chars, rescoring lexicon 8-best": lambda u: rescored(rescoring_candidates([u], True), best_weight[True])[0],
    "AED chars, joint CTC/attention beam 4": lambda u: transcribe_joint([u])[0],
    "AED words, greedy": lambda u: transcribe_aed([u], model=aed_words, units=word_vocab)[0],
    "CTC chars, greedy": ctc_chars,
    "CTC chars, greedy, snapped": lambda u: snap_to_lexicon(ctc_chars(u), vocab.words),
    "CTC chars, prefix beam 8": lambda u: ctc_chars(u, beam=8),
    "CTC chars, lexicon beam 8": lambda u: ctc_chars(u, beam=8, lexicon=True),
    "CTC words, greedy": lambda u: word_vocab.decode(greedy_decode(*ctc_word_posteriors([u]))[0]),
    "Paraformer words": lambda u: transcribe_para(para, [u])[0],
    "Paraformer words, no glancing": lambda u: transcribe_para(para_ng, [u])[0],
    "CASS-NAT words": lambda u: transcribe_cass([u])[0],
    "features + encoder only": lambda u: encode([u]),
}
timed = test_set[:200]
for fn in recognizers.values():
    fn(timed[0])  # warm-up
per_utterance = {name: [] for name in recognizers}  # seconds, one per utterance
outputs = {name: [] for name in recognizers}
for u in timed:
    for name, fn in recognizers.items():
        sync()
        start = time.perf_counter()
        outputs[name].append(fn(u))
        sync()
        per_utterance[name].append(time.perf_counter() - start)
outputs["CASS-NAT words, oracle alignment"] = transcribe_cass(timed, oracle=True)
audio = sum(u.duration for u in timed)
timed_refs = [u.transcript for u in timed]
rtf = {name: sum(s) / audio for name, s in per_utterance.items()}
systems = [name for name in outputs if name != "features + encoder only"]
stats = {}
for name in systems:
    wer, low, high = wer_interval(timed_refs, outputs[name])
    stats[name] = {**word_error_counts(timed_refs, outputs[name]), "wer": wer, "low": low, "high": high}
char_base = rtf["AED chars, greedy"]
print(f"{'recognizer':>38} {'WER [95 %]':>21} {'S/D/I':>12} {'RTF':>7} {'vs AED chars':>12}")
assert all(abs(stats[name]["wer"] - word_error_rate(timed_refs, outputs[name])) < 1e-12 for name in systems)
for name in systems:
    s = stats[name]
    speed = f"{rtf[name]:7.4f} {char_base / rtf[name]:11.1f}x" if name in rtf else f"{'-':>7} {'-':>12}"
    print(f"{name:>38} {s['wer']:6.3f} [{s['low']:.3f}, {s['high']:.3f}] "
          f"{s['substitutions']:>4}/{s['deletions']:>3}/{s['insertions']:>3} {speed}")
print(f"{len(timed)} utterances, {audio:.0f} s of audio, batch 1")
assert outputs["CTC chars, greedy"] == ctc_greedy[:200]  # batched and one-by-one decoding agree
assert outputs["AED chars, rescoring lexicon 8-best"] == rescored_test[True]  # batch 1 = batched search
fixed = rtf["features + encoder only"]
bound = char_base / fixed  # Amdahl: no decoder can be faster than no decoder at all
print(f"features + encoder: {fixed / char_base:.0%} of the greedy character AED's time; so no recognizer on this "
      f"encoder can be more than {bound:.1f}x faster than it")
check_timing(char_base / rtf["CTC chars, greedy"] >= 3 and char_base / rtf["Paraformer words"] >= 2.5,
             "CTC and Paraformer should be at least 3x and 2.5x faster than the greedy character AED")
check_timing(char_base / rtf["CTC chars, greedy"] <= 1.05 * bound, "CTC cannot be faster than its encoder alone")
check_timing(rtf["AED chars, rescoring lexicon 8-best"] < char_base,
             "one batched rescoring pass should cost less than 25 sequential decoder steps")


def gap(a, b):
    """Paired bootstrap difference of WER, a - b, on the timed utterances: (mean, low, high)."""
    return wer_difference(timed_refs, outputs[a], outputs[b])


best_ar = ["AED chars, joint CTC/attention beam 4", "AED chars, rescoring lexicon 8-best"]
parallel = ["CTC words, greedy", "Paraformer words", "Paraformer words, no glancing", "CASS-NAT words"]
pairs = [(a, "AED chars, greedy") for a in best_ar] + [(a, b) for a in best_ar for b in parallel] + [
    ("CTC chars, lexicon beam 8", "Paraformer words"), ("Paraformer words", "AED words, greedy"),
    ("CASS-NAT words", "Paraformer words")]
for a, b in pairs:
    d = gap(a, b)
    print(f"{a} - {b}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
for a, b in pairs[:2 + 2 * len(parallel)]:  # AR decoding done right beats greedy and every parallel decoder
    assert gap(a, b)[2] < 0, (a, b)

# %% [markdown]
# **Batched, and against output length.** At batch 1 a decoder's sequential steps dominate; a server
# batches. Below, the recognizers whose decoding runs on a whole batch at once transcribe all 400 test
# utterances in length-bucketed batches of 32; and, from the batch-1 timings above, the time per utterance
# against the number of words said. (Batched, the parallel decoders cost little more than the encoder
# alone; differences of a few percent between those rows are timing noise.)

# %%
def batched_by_length(utterances, size=32):
    order = sorted(utterances, key=lambda u: u.waveform.numel())
    return [order[i:i + size] for i in range(0, len(order), size)]


batch_recognizers = {
    "AED chars, greedy": lambda b: transcribe_aed(b),
    "AED words, greedy": lambda b: transcribe_aed(b, model=aed_words, units=word_vocab),
    "CTC chars, greedy": lambda b: [vocab.decode(ids) for ids in greedy_decode(*ctc_posteriors(b))],
    "CTC words, greedy": lambda b: [word_vocab.decode(ids) for ids in greedy_decode(*ctc_word_posteriors(b))],
    "Paraformer words": lambda b: transcribe_para(para, b),
    "CASS-NAT words": lambda b: transcribe_cass(b),
    "features + encoder only": lambda b: encode(b),
}
buckets = batched_by_length(test_set)
batch_seconds = dict.fromkeys(batch_recognizers, 0.0)
for fn in batch_recognizers.values():
    fn(buckets[0])  # warm-up
for bucket in buckets:
    for name, fn in batch_recognizers.items():
        sync()
        start = time.perf_counter()
        fn(bucket)
        sync()
        batch_seconds[name] += time.perf_counter() - start
all_audio = sum(u.duration for u in test_set)
batch_rtf = {name: s / all_audio for name, s in batch_seconds.items()}
for name, r in batch_rtf.items():
    print(f"{name:>24}: RTF {r:.4f} batched ({rtf[name] / r:4.1f}x the throughput of batch 1), "
          f"{batch_rtf['AED chars, greedy'] / r:5.1f}x the greedy character AED's")

n_words = np.array([len(u.words) for u in timed])
fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
growth = {}
for name in ["AED chars, greedy", "AED chars, joint CTC/attention beam 4", "AED words, greedy",
             "CTC chars, greedy", "Paraformer words", "CASS-NAT words"]:
    ms = 1000 * np.array(per_utterance[name])
    means = [ms[n_words == k].mean() for k in range(1, 9)]
    ax.plot(range(1, 9), means, marker="o", ms=3, label=name)
    growth[name] = means[-1] / means[0]  # 8 words against 1
ax.set(xlabel="words said", ylabel="ms per utterance (batch 1)", yscale="log")
ax.legend(fontsize=7)
arlib.export_figure(fig, "time-by-length")  # into figures/ when `make execute` runs
plt.show()
print("time for 8 words over time for 1 word: " + ", ".join(f"{k} {v:.1f}x" for k, v in growth.items()))
check_timing(growth["AED chars, greedy"] > 2 * growth["Paraformer words"],
             f"the character AED's time should grow with length faster than Paraformer's: {growth}")
check_timing(batch_rtf["AED chars, greedy"] / batch_rtf["Paraformer words"] < rtf["AED chars, greedy"] / rtf["Paraformer words"],
             "batching should shrink Paraformer's speed-up over the character AED")

# %% [markdown]
# **The Pareto frontier.** A recognizer is worth considering only if no other is both faster and more
# accurate. The plot puts each at its batch-1 real-time factor and WER; the frontier joins those that no
# other beats on both.

# %%
points = {name: (rtf[name], stats[name]["wer"]) for name in systems if name in rtf}
frontier = sorted(name for name, (r, w) in points.items()
                  if not any(r2 <= r and w2 <= w and (r2, w2) != (r, w) for r2, w2 in points.values()))
fig, ax = plt.subplots(figsize=(7, 3.6), dpi=80)
for name, (r, w) in points.items():
    ax.errorbar(r, w, yerr=[[w - stats[name]["low"]], [stats[name]["high"] - w]],
                fmt="o" if name in frontier else "x", color="C3" if name in frontier else "0.5", ms=4, lw=0.8)
    ax.annotate(name, (r, w), fontsize=6, xytext=(3, 3), textcoords="offset points")
line = sorted(points[n] for n in frontier)
ax.plot([p[0] for p in line], [p[1] for p in line], color="C3", lw=0.8)
ax.set(xscale="log", xlabel="real-time factor, batch 1 (log)", ylabel="WER (200 test utterances)")
arlib.export_figure(fig, "wer-rtf-pareto")  # into figures/ when `make execute` runs
plt.show()
print("on the frontier: " + "; ".join(f"{n} (WER {points[n][1]:.3f}, RTF {points[n][0]:.4f})"
                                      for n in sorted(frontier, key=lambda n: points[n][0])))
assert "AED chars, rescoring lexicon 8-best" in frontier or "AED chars, joint CTC/attention beam 4" in frontier
assert "CTC chars, lexicon beam 8" in frontier  # the knee: nearly the best WER at a fraction of the time

# %% [markdown]
# **Reading the table.** Decoded well, the autoregressive model is the most accurate recognizer here.
# Joint CTC/attention beam search and attention rescoring of the lexicon beam's candidates both reach
# about 1.4 % WER, where greedy attention decoding makes 9 %, and both beat every parallel decoder (the
# paired intervals above exclude zero). The non-autoregressive word decoders, Paraformer, CASS-NAT and
# the CTC head over words, sit together around 5 %, with intervals that overlap. The fastest accurate
# recognizer is not a new decoder at all: CTC over characters, searched with the lexicon, reaches about
# 2 % in well under the greedy attention decoder's time (a third to a half of it, from one run to the
# next: its search is Python), and it is the knee of the Pareto frontier.
# Attention rescoring adds one batched decoder pass to it and is still faster than greedy attention
# decoding, which needs about 24 sequential steps; joint search is the most expensive row.
#
# So the chapter's verdict is narrower than "parallel decoding is as good and faster". At batch 1 the
# parallel decoders are three and a half to four and a half times faster than greedy character decoding,
# close to the bound that the features and the encoder set (Amdahl's law: the last row), and they pay for
# it with three to four times the WER of the best autoregressive decoding. Against the decoder over the same
# words the speed-up shrinks (the word AED writes five tokens, not 24; Paraformer is also more accurate
# than its greedy search, by a paired interval that excludes zero), and batched it shrinks further: a batch
# fills the hardware during every sequential step, so the autoregressive decoder loses less to its
# sequence. The speed-ups are also smaller than the "more than 10x" of the Paraformer paper
# {cite}`gao2022paraformer`, because the book's attention decoder is already the efficient kind: a
# six-layer encoder, a two-layer decoder (section 7 showed what a deeper one costs), short transcripts.
# With a deeper decoder, subword tokens and long utterances the autoregressive part grows and so does
# the bound. These timings are on the CPU the chapter runs on; the committed benchmark
# (`benchmarks/asr.py`, `data/results/asr-cpu.json`) times every recognizer on all 400 test utterances.

# %% [markdown]
# **Harder conditions.** Clean synthetic speech flatters every recognizer. The same 200 test utterances,
# degraded four ways that real audio is (`arlib.speech.conditions`): white noise at 20 dB and at 5 dB
# signal-to-noise ratio; reverberation, by convolving with a synthetic room impulse response (exponentially
# decaying noise whose energy falls 60 dB in $RT_{60} = 0.4$ s, the statistical model of a room's late
# reverberation that the image method {cite}`allen1979image` refines); and speed perturbation by
# resampling to 0.9 and 1.1 times the speed, which moves pitch and formants with the tempo, as Ko et al.
# {cite}`ko2015audio` do to augment training data. None of the models saw these conditions in training
# (the recognizers here are the batched ones; the searches above degrade with their heads).

# %%
from types import SimpleNamespace  # noqa: E402

from arlib.speech.conditions import add_noise, reverberate, speed_perturb, synthetic_rir  # noqa: E402


def degraded(utterances, condition, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for u in utterances:
        if condition == "clean":
            wave = u.waveform
        elif condition.startswith("noise"):
            wave = add_noise(u.waveform, float(condition.split()[1]), g)
        elif condition == "reverberation":
            wave = reverberate(u.waveform, synthetic_rir(0.4, generator=g))
        else:
            wave = speed_perturb(u.waveform, float(condition.split()[1]))
        out.append(SimpleNamespace(waveform=wave, words=u.words, transcript=u.transcript))
    return out


conditions = ["clean", "noise 20", "noise 5", "reverberation", "speed 0.9", "speed 1.1"]
condition_rows = {k: v for k, v in batch_recognizers.items() if k != "features + encoder only"}
condition_rows["CTC chars, greedy, snapped"] = lambda b: [snap_to_lexicon(h, vocab.words)
                                                          for h in batch_recognizers["CTC chars, greedy"](b)]
condition_wer = {}
for condition in conditions:
    utts = degraded(timed, condition)
    for name, fn in condition_rows.items():
        hyps = [t for chunk in batched(utts) for t in fn(chunk)]
        condition_wer[name, condition] = word_error_rate(timed_refs, hyps)
print(f"{'recognizer':>27} " + " ".join(f"{c:>13}" for c in conditions))
for name in condition_rows:
    print(f"{name:>27} " + " ".join(f"{condition_wer[name, c]:13.3f}" for c in conditions))
for name in condition_rows:  # every recognizer degrades under every condition but the faster speech
    assert condition_wer[name, "noise 5"] > condition_wer[name, "noise 20"] > condition_wer[name, "clean"]
    assert min(condition_wer[name, c] for c in ("reverberation", "speed 0.9")) > condition_wer[name, "clean"]
assert all(condition_wer[name, "noise 5"] > 0.85 for name in condition_rows)  # 5 dB: nothing survives
ratio_20 = [condition_wer[name, "noise 20"] / condition_wer[name, "clean"] for name in condition_rows]
assert 2.5 < min(ratio_20) and max(ratio_20) < 7
for name in condition_rows:  # reverberation between the two noise levels; faster speech the mildest
    assert condition_wer[name, "noise 20"] < condition_wer[name, "reverberation"] < condition_wer[name, "noise 5"]
    assert condition_wer[name, "speed 1.1"] == min(condition_wer[name, c] for c in conditions[1:])

# %% [markdown]
# Every recognizer falls apart in noise: at 20 dB the WERs rise three- to sevenfold, and at 5 dB all
# exceed 85 % and most pass 100 % (insertions count). Reverberation falls between the two noise levels;
# slower speech costs more than faster speech, the mildest condition, which still doubles some WERs. The
# word decoders change places from one condition to another (no paired intervals are computed here, so no
# ranking is claimed): no decoder buys robustness that the shared encoder lacks. Real systems get it from
# training data: noise and simulated reverberation are standard augmentations, and so is speed
# perturbation {cite}`ko2015audio`; the reader can add them to the recipes. (The clean column is batched
# decoding; padding changes floating-point sums, so it can differ by a word from the batch-1 table.)

# %% [markdown]
# **Real speech.** Debian's `pocketsphinx-testdata` package ships a dozen real recordings from CMU's
# PocketSphinx tests with their transcripts (`arlib.data.real_speech` reads them and checks their
# checksums). Two say only words of our vocabulary: a TIDIGITS digit string and "five five" from a card
# game. Five more say some of them ("go forward ten meters", "ten of clubs", ...). This is a reality
# check, not a test set: a handful of utterances by real speakers with real microphones and rooms.
# For the recordings with unknown words we count how many of their known words each recognizer writes.

# %%
from arlib.data.real_speech import real_recordings  # noqa: E402

recordings = [r for r in real_recordings() if set(r.words) - set(r.oov)]  # at least one word we know
real_rows = ["AED chars, greedy", "AED chars, rescoring lexicon 8-best", "AED chars, joint CTC/attention beam 4",
             "AED words, greedy", "CTC chars, greedy", "CTC chars, lexicon beam 8", "CTC words, greedy",
             "Paraformer words", "CASS-NAT words"]
real_out = {name: [recognizers[name](r) for r in recordings] for name in real_rows}
print(f"{len(recordings)} real recordings, {sum(r.duration for r in recordings):.1f} s:")
for i, r in enumerate(recordings):
    print(f"  said {r.transcript!r}" + (f" (unknown: {', '.join(r.oov)})" if r.oov else ""))
    for name in real_rows:
        print(f"    {name:>38}: {real_out[name][i]!r}")
known_said = sum(len([w for w in r.words if w not in r.oov]) for r in recordings)
known_found = {name: sum(sum(min(r.words.count(w), h.split().count(w)) for w in set(r.words) - set(r.oov))
                         for r, h in zip(recordings, real_out[name])) for name in real_rows}
print("known words written, of " + str(known_said) + ": " + ", ".join(f"{k} {v}" for k, v in known_found.items()))
assert max(known_found.values()) <= known_said / 2  # no recognizer writes even half of the known words

# %% [markdown]
# None of the recognizers understands real speech: the best writes fewer than half of the known words,
# and the clean digit string comes out wrong from every one. That is the plain limit of this chapter's
# data. Synthesized speech has a handful of vocal tracts, no breath, no hesitation, no room and no
# microphone; its timing is a rule, not a habit. Everything measured here (the WERs, which decoder
# wins, what SpecAugment buys) is measured on that distribution, and held-out synthetic voices are still
# synthetic. What transfers is the method: the algorithms, the way to compare them (same encoder, same
# words, dev for choices, paired intervals), and the costs, which do not depend on the data. A recognizer
# for real speech needs real recordings in training: LibriSpeech or Common Voice, beyond this book's
# offline corpus.


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
#   SpecAugment hides bands and spans of them; it cut the dev WER by over a fifth (CTC) to over a third
#   (attention) here, while on the test voices the difference was not resolved.
# - The data are held out honestly: unseen voice variants with no near-copies, an accent never heard in
#   training, no shared sentence, and a dev split for every choice.
# - A hybrid CTC/attention model trains one encoder for two heads. Its attention decoder, decoded greedily,
#   loses its place in the audio (missing, repeated and runaway words); joint CTC/attention beam search
#   and attention rescoring of CTC's lexicon-constrained candidates stop that, and were the most accurate
#   recognizers of the chapter, several times below greedy decoding and below every parallel decoder.
# - CTC sums over every frame labelling that collapses to the transcript with the forward recursion in
#   log space (equal to PyTorch's in value and, through the log-softmax, in gradient). Its posteriors are
#   spiky and blank-dominated, and the single best path holds only a sliver of the probability. A
#   character CTC head misspells; a lexicon in the search removes most of its errors and made it the
#   knee of the speed/accuracy frontier.
# - Paraformer's continuous integrate-and-fire counts and locates tokens with one weight per frame;
#   CASS-NAT cuts the frames with a CTC alignment. Over the same words the two land together with a CTC
#   head, at three to four times the error of the best autoregressive decoding and a fraction of its time
#   at batch 1. CASS-NAT's error is mostly its alignment's; the glancing sampler bought nothing measurable on
#   a corpus whose words are independent.
# - Padding is the cost of random batches (length bucketing removes most of it, in training too), depth
#   in the decoder is paid once per token, batching shrinks the parallel decoders' advantage, and the
#   speed-up of any decoder is bounded by the features and the encoder it cannot avoid.
# - Synthetic speech taught none of the models to hear real speech, and noise at 5 dB defeats them all.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```
