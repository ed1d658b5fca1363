"""Speech recognizers for chapter 5: the shared pieces, a CTC model and an attention encoder-decoder.

- :class:`TranscriptVocab`: characters of the corpus's closed vocabulary; id 0 is CTC's blank (and
  padding), id 1 starts and ends a transcript for the autoregressive decoder.
- :func:`speech_features`: log-mel frames normalized per utterance, padded into a batch.
- :class:`SpeechEncoder`: convolutional subsampling by 2 (20 ms frames) and a pre-LN transformer.
- :class:`CTCModel`: the encoder and a linear layer to labels + blank (Graves et al. 2006).
- :class:`DecoderBlock`: the GPT's block with cross-attention (:class:`CrossAttention`) to the encoder.
- :class:`AttentionDecoder`: an autoregressive transformer decoder over characters with
  cross-attention to the encoder (Vaswani et al. 2017; Chan et al.'s LAS in spirit), with a KV cache
  (:class:`DecoderCache`), batched greedy decoding and beam search.

The non-autoregressive Paraformer lives in :mod:`arlib.speech.paraformer`.

The transformer layers are chapter 1's (:mod:`arlib.text.gpt`: its attention, MLP, block and
preallocated KV cache), with the exact (erf) GELU and the MLP width ``ff``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arlib.data.speech import SAMPLE_RATE, VOCABULARY
from arlib.speech._checks import index_tensor
from arlib.speech._checks import lengths as check_lengths
from arlib.speech._checks import memory as check_memory
from arlib.speech.audio import log_mel
from arlib.text.gpt import Block, CausalSelfAttention, GPTConfig, KVCache, causal_mask, merge_heads, split_heads
from arlib.validate import describe, int_at_least, int_in_range, is_int, number_in, positive_int

BLANK, EOS = 0, 1  # EOS also starts a transcript (as <s>)


class TranscriptVocab:
    """Token ids for the corpus's transcripts: characters (``unit="char"``, the space included) or whole
    words (``unit="word"``); ``encode("two stop")`` -> ids. Words outside the vocabulary are refused."""

    def __init__(self, words: tuple[str, ...] = VOCABULARY, unit: str = "char"):
        if unit not in ("char", "word"):
            raise ValueError(f"unit: expected 'char' or 'word', got {unit!r}")
        if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words \
                or not all(isinstance(w, str) and w and " " not in w for w in words):
            raise ValueError(f"words: expected a non-empty list of non-empty words without spaces, got {words!r:.80}")
        self.words, self.unit = tuple(words), unit
        self.chars = " " + "".join(sorted(set("".join(self.words))))
        self.units = tuple(self.chars) if unit == "char" else self.words
        self.size = 2 + len(self.units)  # blank, eos, then the units
        self._index = {c: i + 2 for i, c in enumerate(self.units)}

    def encode(self, transcript: str, strict: bool = True) -> list[int]:
        """Character ids; ``strict`` refuses words outside the vocabulary, otherwise only unknown characters
        are refused (a recognizer's output may spell a non-word)."""
        if not isinstance(transcript, str):
            raise TypeError(f"transcript: expected a string, got {type(transcript).__name__}")
        if not isinstance(strict, bool):
            raise TypeError(f"strict: expected a bool, got {strict!r}")
        if not strict and self.unit == "char":
            bad = sorted(set(transcript) - set(self.chars))
            if bad:
                raise ValueError(f"transcript: characters {bad} are not in the alphabet {self.chars!r}")
            return [self._index[c] for c in transcript]
        unknown = [w for w in transcript.split(" ") if w not in self.words]
        if unknown or transcript != transcript.strip():
            raise ValueError(f"transcript: expected words from the vocabulary separated by single spaces, "
                             f"got unknown {unknown or [transcript]} in {transcript!r}")
        return [self._index[c] for c in (transcript if self.unit == "char" else transcript.split(" "))]

    def decode(self, ids) -> str:
        """Ids -> text; blanks and EOS are skipped."""
        if isinstance(ids, torch.Tensor):
            if not index_tensor(ids) or ids.dim() != 1:
                raise ValueError(f"ids: expected a 1-D integer tensor or a list of ints, got {describe(ids)}")
            ids = ids.tolist()
        if isinstance(ids, str) or not isinstance(ids, (list, tuple)) \
                or not all(is_int(i) and 0 <= i < self.size for i in ids):
            raise ValueError(f"ids: expected a list of ints in [0, {self.size}), got {ids!r:.80}")
        return ("" if self.unit == "char" else " ").join(self.units[i - 2] for i in ids if i >= 2)

    def batch(self, transcripts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ids (B, U) (0 = padding) and lengths (B,)."""
        if isinstance(transcripts, str) or not isinstance(transcripts, (list, tuple)):
            raise TypeError(f"transcripts: expected a list of strings, got {type(transcripts).__name__}")
        ids = [self.encode(t) for t in transcripts]
        out = torch.zeros(len(ids), max(map(len, ids), default=0), dtype=torch.long)
        for b, row in enumerate(ids):
            out[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out, torch.tensor([len(r) for r in ids])


def speech_features(waves: list[torch.Tensor], sample_rate: int = SAMPLE_RATE, n_mels: int = 80
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel frames (25 ms windows every 10 ms), each channel normalized to zero mean and unit variance
    over the utterance (which removes loudness and much of a voice's colour): (B, T, n_mels), lengths (B,)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"sample_rate: the models expect {SAMPLE_RATE} Hz audio, got {sample_rate}; resample first")
    positive_int(n_mels, "n_mels")
    if isinstance(waves, torch.Tensor) and waves.dim() == 1:
        waves = [waves]
    if isinstance(waves, torch.Tensor) or not isinstance(waves, (list, tuple)) or not waves:
        raise ValueError(f"waves: expected a non-empty list of 1-D waveforms, got {describe(waves)}")
    feats = []
    for i, w in enumerate(waves):
        if not isinstance(w, torch.Tensor) or w.dim() != 1 or w.numel() < 400:
            raise ValueError(f"waves[{i}]: expected a 1-D waveform of at least 400 samples (25 ms), "
                             f"got {tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
        if w.is_complex() or not torch.isfinite(w).all():
            raise ValueError(f"waves[{i}]: expected finite real samples")
        m = log_mel(w.float(), sample_rate, n_mels=n_mels).T  # (T, M)
        feats.append((m - m.mean(0)) / (m.std(0) + 1e-5))
    lengths = torch.tensor([len(f) for f in feats])
    return nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


def padding_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """True on real frames: (B, T), for ``lengths`` (B,) in [0, T]."""
    int_at_least(T, "T", 0)
    if not index_tensor(lengths) or lengths.dim() != 1:
        raise ValueError(f"lengths: expected a 1-D integer tensor, got {describe(lengths)}")
    check_lengths(lengths, "lengths", len(lengths), 0, T)
    return _mask(lengths, T)


def _mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """:func:`padding_mask` without the checks (the models' inner loops)."""
    return torch.arange(T, device=lengths.device) < lengths[:, None]


def sinusoids(T: int, d: int, device=None) -> torch.Tensor:
    """Vaswani et al.'s fixed positional encodings: (T, d), ``d`` even."""
    int_at_least(T, "T", 0)
    positive_int(d, "d")
    if d % 2:
        raise ValueError(f"d: expected an even width (sines and cosines in pairs), got {d}")
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    pe = torch.zeros(T, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


def layer_config(d: int, heads: int, layers: int, dropout: float, max_len: int = 1) -> GPTConfig:
    """The sizes of a stack of speech transformer layers as the GPT's config, which builds them; a layer
    reads no vocabulary, and ``max_len`` is the decoder's KV cache length."""
    positive_int(heads, "heads")
    if not is_int(d) or d < 1 or d % heads:
        raise ValueError(f"d: expected a multiple of heads={heads!r} (a positive int), got {d!r}")
    positive_int(layers, "layers")
    number_in(dropout, "dropout", 0, 1, bounds="[)")
    positive_int(max_len, "max_len")
    return GPTConfig(vocab_size=1, block_size=max_len, n_layer=layers, n_head=heads, n_embd=d, dropout=dropout)


def speech_layer(block: Block) -> Block:
    """``block`` with dropout on its residual branches only: chapter 5's recipes train without dropout
    on the attention probabilities (the GPT's ``attn_dropout``)."""
    if not isinstance(block, Block):
        raise ValueError(f"block: expected an arlib.text.gpt.Block, got {type(block).__name__}")
    for attn in (block.attn, getattr(block, "cross", None)):
        if attn is not None:
            attn.attn_dropout = 0.0
    return block


def _check_config(config) -> None:
    if not isinstance(config, GPTConfig):
        raise ValueError(f"config: expected a GPTConfig (from layer_config), got {type(config).__name__}")


class CrossAttention(CausalSelfAttention):
    """Encoder-decoder attention (Vaswani et al. 2017, sec. 3.2.3): queries from the decoder's stream x
    (B, U, d), keys and values from the encoder's output, the memory (B, S, d). The parameters are
    self-attention's: ``c_attn`` stacks the query, key and value maps, here applied to two inputs (the
    query rows to x, the key and value rows to the memory), and ``c_proj`` mixes the heads."""

    def __init__(self, config: GPTConfig):
        _check_config(config)
        if config.kv_heads != config.n_head:
            raise ValueError(f"config: cross-attention takes multi-head attention (n_kv_head=None), "
                             f"got n_kv_head={config.n_kv_head}")
        super().__init__(config)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, S, D) of the memory (B, S, d): computed once per utterance, since the
        memory does not change while the decoder runs."""
        kv = F.linear(memory, self.c_attn.weight[self.n_embd:], self.c_attn.bias[self.n_embd:])  # (B, S, 2d)
        k, v = kv.chunk(2, dim=2)
        return split_heads(k, self.n_head), split_heads(v, self.n_head)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``kv`` from :meth:`keys_values`; ``mask`` (B, 1, 1, S) is True on the memory frames to attend to."""
        q = split_heads(F.linear(x, self.c_attn.weight[:self.n_embd], self.c_attn.bias[:self.n_embd]), self.n_head)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, *kv, attn_mask=mask, dropout_p=dropout)  # (B, H, U, D)
        return self.resid_dropout(self.c_proj(merge_heads(y)))


class DecoderBlock(Block):
    """The GPT's pre-LN block with cross-attention between self-attention and the MLP:
    x += attn(ln_1 x); x += cross(ln_cross x, memory); x += mlp(ln_2 x)."""

    def __init__(self, config: GPTConfig, hidden: int | None = None, approximate: str = "tanh"):
        _check_config(config)
        if hidden is not None:
            positive_int(hidden, "hidden")
        if approximate not in ("tanh", "none"):
            raise ValueError(f"approximate: expected 'tanh' or 'none' (GELU's), got {approximate!r}")
        super().__init__(config, hidden, approximate)
        self.ln_cross = nn.LayerNorm(config.n_embd)
        self.cross = CrossAttention(config)

    def forward(self, x, memory_kv, memory_mask=None, cache: KVCache | None = None, layer: int = 0, mask=None):
        """``memory_kv`` from ``self.cross.keys_values(memory)``; ``cache``, ``layer`` and ``mask`` are the
        self-attention's, as in the GPT's block (no mask and no cache: causal)."""
        x = x + self.attn(self.ln_1(x), cache, layer, mask)
        x = x + self.cross(self.ln_cross(x), memory_kv, memory_mask)
        return x + self.mlp(self.ln_2(x))


class SpeechEncoder(nn.Module):
    """(B, T, n_mels) log-mel frames -> (B, ceil(T/2), d): two convolutions (the second with stride 2),
    sinusoidal positions, ``layers`` transformer blocks."""

    def __init__(self, n_mels: int = 80, d: int = 64, layers: int = 6, heads: int = 4, ff: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        positive_int(n_mels, "n_mels")
        positive_int(ff, "ff")
        layer = layer_config(d, heads, layers, dropout)  # checks the sizes before anything is built
        self.config = dict(n_mels=n_mels, d=d, layers=layers, heads=heads, ff=ff, dropout=dropout)
        self.conv = nn.Sequential(nn.Conv1d(n_mels, d, 3, padding=1), nn.GELU(),
                                  nn.Conv1d(d, d, 3, stride=2, padding=1), nn.GELU())
        self.blocks = nn.ModuleList(speech_layer(Block(layer, ff, "none")) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return (lengths - 1) // 2 + 1

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(feats, torch.Tensor) or not feats.is_floating_point() or feats.dim() != 3 \
                or feats.shape[-1] != self.config["n_mels"]:
            raise ValueError(f"feats: expected a float tensor (B, T, {self.config['n_mels']}), got {describe(feats)}")
        lengths = check_lengths(lengths, "lengths", feats.shape[0], 1, feats.shape[1], feats.device)
        x = self.conv[1](self.conv[0](feats.transpose(1, 2)))  # (B, d, T)
        x = x * _mask(lengths, x.shape[2])[:, None, :]  # padding must not leak into the strided conv
        x = self.conv[3](self.conv[2](x)).transpose(1, 2)  # (B, T', d)
        lengths = self.output_lengths(lengths)
        x = x + sinusoids(x.shape[1], x.shape[2], x.device)
        mask = _mask(lengths, x.shape[1])[:, None, None, :]  # (B, 1, 1, T'): keys to attend to
        for block in self.blocks:
            x = block(x, mask=mask)  # bidirectional: every real frame sees every real frame
        return self.ln(x), lengths


class CTCModel(nn.Module):
    """Encoder + a linear layer to the labels and the blank: per-frame log-probabilities (B, T', V)."""

    def __init__(self, vocab_size: int, **encoder):
        super().__init__()
        positive_int(vocab_size, "vocab_size")
        self.encoder = SpeechEncoder(**encoder)
        self.head = nn.Linear(self.encoder.config["d"], vocab_size)
        self.config = {"vocab_size": vocab_size, **self.encoder.config}

    def forward(self, feats, lengths):
        hidden, lengths = self.encoder(feats, lengths)
        return self.head(hidden).log_softmax(-1), lengths


class CTCHead(nn.Module):
    """A CTC output over a frozen encoder's memory: ``layers`` bidirectional transformer blocks (the same
    depth as the decoders beside it, so that every decoder adds matched compute) and a linear layer to the
    units and the blank. (B, S, d), (B,) -> per-frame log-probabilities (B, S, V) and the lengths."""

    def __init__(self, vocab_size: int, d: int = 64, layers: int = 2, heads: int = 4, ff: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        positive_int(vocab_size, "vocab_size")
        positive_int(ff, "ff")
        layer = layer_config(d, heads, layers, dropout)
        self.config = dict(vocab_size=vocab_size, d=d, layers=layers, heads=heads, ff=ff, dropout=dropout)
        self.blocks = nn.ModuleList(speech_layer(Block(layer, ff, "none")) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)

    def forward(self, memory, memory_lengths):
        memory_lengths = check_memory(memory, memory_lengths, self.config["d"])
        mask = _mask(memory_lengths, memory.shape[1])[:, None, None, :]
        x = memory
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.head(self.ln(x)).log_softmax(-1), memory_lengths


class HybridCTCAttention(nn.Module):
    """The hybrid CTC/attention model of Watanabe et al. 2017 ("Hybrid CTC/attention architecture for
    end-to-end speech recognition", eq. 33): one encoder shared by a CTC head (``ctc``, a
    :class:`CTCModel`) and an attention decoder (``decoder``), trained on
    ``ctc_weight * L_ctc + (1 - ctc_weight) * L_attention``. Both heads use the same token ids, so they can
    decode together (joint beam search, or attention rescoring of CTC's n-best as in WeNet's U2)."""

    def __init__(self, vocab_size: int, d: int = 64, layers: int = 6, heads: int = 4, ff: int = 256,
                 decoder_layers: int = 2, ctc_weight: float = 0.3, n_mels: int = 80, dropout: float = 0.1):
        super().__init__()
        number_in(ctc_weight, "ctc_weight", 0, 1)
        self.ctc = CTCModel(vocab_size, n_mels=n_mels, d=d, layers=layers, heads=heads, ff=ff, dropout=dropout)
        self.decoder = AttentionDecoder(vocab_size, d=d, layers=decoder_layers, heads=heads, ff=ff, dropout=dropout)
        self.config = dict(vocab_size=vocab_size, d=d, layers=layers, heads=heads, ff=ff,
                           decoder_layers=decoder_layers, ctc_weight=ctc_weight, n_mels=n_mels, dropout=dropout)

    @property
    def encoder(self) -> SpeechEncoder:
        return self.ctc.encoder

    def losses(self, feats, lengths, targets, target_lengths) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(joint loss, CTC loss, attention loss) for a batch of features (B, T, n_mels) and transcripts."""
        hidden, out_lengths = self.ctc.encoder(feats, lengths)
        log_probs = self.ctc.head(hidden).log_softmax(-1)  # (B, T', V)
        ctc = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, zero_infinity=True)
        attention = self.decoder.loss(hidden, out_lengths, targets, target_lengths)
        w = self.config["ctc_weight"]
        return w * ctc + (1 - w) * attention, ctc, attention


class DecoderCache(KVCache):
    """The state of incremental decoding: the GPT's preallocated :class:`~arlib.text.gpt.KVCache` of the
    decoder's self-attention (``max_len`` positions), plus each layer's cross-attention keys and values
    of the memory, computed once (``memory_kv``, a list of (k, v) pairs (B, H, S, D))."""

    def __init__(self, decoder: AttentionDecoder, memory: torch.Tensor):
        if not isinstance(decoder, AttentionDecoder):
            raise ValueError(f"decoder: expected an AttentionDecoder, got {type(decoder).__name__}")
        if not isinstance(memory, torch.Tensor) or memory.dim() != 3 or memory.shape[2] != decoder.config["d"]:
            raise ValueError(f"memory: expected the encoder's output (B, S, {decoder.config['d']}), "
                             f"got {describe(memory)}")
        super().__init__(decoder.layers, memory.shape[0], memory.device, memory.dtype)
        self.memory_kv = [block.cross.keys_values(memory) for block in decoder.blocks]

    def reorder(self, order: torch.Tensor) -> None:
        """Keep rows ``order`` (B,) of the batch: beam search's hypotheses take their parents' caches."""
        B = self.k.shape[1]
        if not index_tensor(order) or order.shape != (B,) or (order < 0).any() or (order >= B).any():
            raise ValueError(f"order: expected an integer tensor ({B},) of rows in [0, {B}), got {describe(order)}")
        self.k, self.v = self.k[:, order], self.v[:, order]  # (L, B, H, T_max, D)
        self.memory_kv = [(k[order], v[order]) for k, v in self.memory_kv]


class AttentionDecoder(nn.Module):
    """Autoregressive character decoder: p(y_u | y_<u, encoder output), causal self-attention plus
    cross-attention, tied input/output embeddings. Transcripts start with EOS (as <s>) and end with it."""

    def __init__(self, vocab_size: int, d: int = 64, layers: int = 2, heads: int = 4, ff: int = 256,
                 max_len: int = 96, dropout: float = 0.1):
        super().__init__()
        int_at_least(vocab_size, "vocab_size", 2, expected="an int >= 2 (the blank/padding and EOS come first)")
        positive_int(ff, "ff")
        self.config = dict(vocab_size=vocab_size, d=d, layers=layers, heads=heads, ff=ff, max_len=max_len,
                           dropout=dropout)
        self.layers = layer_config(d, heads, layers, dropout, max_len)  # checks the sizes first
        self.embed, self.pos = nn.Embedding(vocab_size, d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(speech_layer(DecoderBlock(self.layers, ff, "none")) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def new_cache(self, memory: torch.Tensor) -> DecoderCache:
        """An empty cache for decoding the utterances of ``memory`` (B, S, d) step by step."""
        return DecoderCache(self, memory)

    def forward(self, tokens, memory, memory_lengths, cache: DecoderCache | None = None, validate: bool = True):
        """Logits (B, U, V) for ``tokens`` (B, U): teacher forcing from position 0, or with ``cache`` (from
        :meth:`new_cache`) the next U positions of incremental decoding (the cache grows by U).
        ``validate=False`` skips the checks of the ids' range and of ``memory_lengths`` (decoding loops)."""
        if validate:
            memory_lengths = self._check_memory(memory, memory_lengths)
            if not index_tensor(tokens) or tokens.dim() != 2 or tokens.shape[0] != memory.shape[0]:
                raise ValueError(f"tokens: expected an integer tensor ({memory.shape[0]}, U) of ids, "
                                 f"got {describe(tokens)}")
            if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config["vocab_size"]):
                raise ValueError(f"tokens: ids must lie in [0, {self.config['vocab_size']})")
            if cache is not None and not isinstance(cache, DecoderCache):
                raise ValueError(f"cache: expected a DecoderCache (from new_cache), got {type(cache).__name__}")
        B, U = tokens.shape
        start = 0 if cache is None else cache.length
        if start + U > self.config["max_len"]:
            raise ValueError(f"tokens: positions up to {start + U} exceed max_len={self.config['max_len']}")
        if cache is not None and cache.k.shape[1] != B:
            raise ValueError(f"cache: built for a batch of {cache.k.shape[1]}, got tokens of batch {B}")
        x = self.embed(tokens) + self.pos(torch.arange(start, start + U, device=tokens.device))
        mask = causal_mask(U, start, x.device) if cache is not None and U > 1 else None  # else causal or one step
        mmask = _mask(memory_lengths, memory.shape[1])[:, None, None, :]  # (B, 1, 1, S)
        for layer, block in enumerate(self.blocks):
            kv = block.cross.keys_values(memory) if cache is None else cache.memory_kv[layer]
            x = block(x, kv, mmask, cache, layer, mask)
        if cache is not None:
            cache.length += U
        return self.ln(x) @ self.embed.weight.T

    def _check_memory(self, memory, memory_lengths) -> torch.Tensor:
        return check_memory(memory, memory_lengths, self.config["d"])

    def _check_max_len(self, max_len) -> int:
        top = self.config["max_len"] - 1
        return top if max_len is None else int_in_range(max_len, "max_len", 1, top)

    def loss(self, memory, memory_lengths, targets, target_lengths) -> torch.Tensor:
        """Teacher-forced cross-entropy of (EOS, y) -> (y, EOS), padding ignored."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        if not index_tensor(targets) or targets.dim() != 2 or targets.shape[0] != memory.shape[0]:
            raise ValueError(f"targets: expected an integer tensor ({memory.shape[0]}, U) of ids, "
                             f"got {describe(targets)}")
        target_lengths = check_lengths(target_lengths, "target_lengths", targets.shape[0], 0, targets.shape[1],
                                       targets.device)
        B, U = targets.shape
        inp = torch.cat([torch.full((B, 1), EOS, device=targets.device), targets], dim=1)  # (B, U+1)
        out = torch.cat([targets, torch.zeros(B, 1, dtype=torch.long, device=targets.device)], dim=1)
        out[torch.arange(B, device=targets.device), target_lengths.to(targets.device)] = EOS
        out[torch.arange(U + 1, device=targets.device) > target_lengths[:, None].to(targets.device)] = -100
        logits = self(inp, memory, memory_lengths)
        return F.cross_entropy(logits.flatten(0, 1), out.flatten(), ignore_index=-100)

    @torch.no_grad()
    def greedy(self, memory, memory_lengths, max_len: int | None = None) -> tuple[list[list[int]], int]:
        """Batched greedy decoding with a KV cache: (token lists, decoder steps run)."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        B = memory.shape[0]
        max_len = self._check_max_len(max_len)
        cache = self.new_cache(memory)
        token = torch.full((B, 1), EOS, device=memory.device)
        out, done = [], torch.zeros(B, dtype=torch.bool, device=memory.device)
        for _ in range(max_len):
            token = self(token, memory, memory_lengths, cache, validate=False)[:, -1].argmax(-1, keepdim=True)
            out.append(token)
            done |= token[:, 0] == EOS
            if done.all():
                break
        ids = torch.cat(out, dim=1).tolist()
        return [row[:row.index(EOS)] if EOS in row else row for row in ids], len(out)

    @torch.no_grad()
    def beam_search(self, memory, memory_lengths, beam: int = 4, max_len: int | None = None
                    ) -> list[tuple[list[int], float]]:
        """Beam search for one utterance (memory (1, T, d)); the beams are a batch. Returns finished
        hypotheses (tokens, log p) best first, scored by total log-probability."""
        memory_lengths = self._check_memory(memory, memory_lengths)
        if memory.shape[0] != 1:
            raise ValueError(f"memory: beam search takes one utterance (1, T, d), got {tuple(memory.shape)}")
        positive_int(beam, "beam")
        max_len = self._check_max_len(max_len)
        memory, memory_lengths = memory.expand(beam, -1, -1), memory_lengths.expand(beam)
        cache = self.new_cache(memory)
        seqs = torch.full((beam, 1), EOS, device=memory.device)
        scores = torch.full((beam,), -math.inf, device=memory.device)
        scores[0] = 0.0  # all beams start identical: keep one alive
        finished: list[tuple[list[int], float]] = []
        for _ in range(max_len):
            logp = self(seqs[:, -1:], memory, memory_lengths, cache, validate=False)[:, -1].log_softmax(-1)
            total = (scores[:, None] + logp).flatten()  # (beam * V,)
            top, idx = total.topk(2 * beam)
            origin, token = idx // logp.shape[1], idx % logp.shape[1]
            keep = []
            for s, o, t in zip(top.tolist(), origin.tolist(), token.tolist()):
                if s == -math.inf:
                    break
                if t == EOS:
                    finished.append((seqs[o, 1:].tolist(), s))
                elif len(keep) < beam:
                    keep.append((o, t, s))
            if not keep or (len(finished) >= beam and max(f[1] for f in finished) >= keep[0][2]):
                break
            while len(keep) < beam:  # pad with dead beams
                keep.append((keep[0][0], keep[0][1], -math.inf))
            order = torch.tensor([k[0] for k in keep], device=memory.device)
            cache.reorder(order)
            seqs = torch.cat([seqs[order], torch.tensor([[k[1]] for k in keep], device=memory.device)], dim=1)
            scores = torch.tensor([k[2] for k in keep], device=memory.device)
        if not finished:
            finished = [(seqs[0, 1:].tolist(), float(scores[0]))]
        return sorted(finished, key=lambda f: -f[1])
