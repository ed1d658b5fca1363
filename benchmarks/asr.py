"""Speech recognition speed and accuracy on unseen voices: the attention encoder-decoders over characters
(greedy and beam search) and over words, CTC (greedy and prefix beam search) and Paraformer over words
(with and without glancing), measured in one run on the same held-out utterances.

    python benchmarks/asr.py                 # 400 test utterances, batch size 1
    python benchmarks/asr.py --quick         # 100
    python benchmarks/asr.py --batch 32      # throughput view: utterances batched by length (greedy only)

All recognizers share the ``speech-ctc`` encoder. The real-time factor (RTF) is processing time over audio
duration, features included; recognizers take turns on each utterance so that they share the machine's
state. Speed-ups are against the autoregressive decoders' greedy search in this run: compare ratios
across machines, not seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

import arlib
from arlib.data import spoken_utterances
from arlib.speech.ctc import greedy_decode, prefix_beam_search
from arlib.speech.error_rates import word_error_rate
from arlib.speech.models import TranscriptVocab, speech_features


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=1, help="utterances per call (> 1: greedy recognizers only)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    args = parser.parse_args(argv)
    device = arlib.setup(seed=0, device=args.device)
    vocab, word_vocab = TranscriptVocab(), TranscriptVocab(unit="word")
    ctc = arlib.load("speech-ctc", device).model
    aed = arlib.load("speech-aed", device).model
    aed_words = arlib.load("speech-aed-words", device).model
    para = arlib.load("speech-paraformer", device).model
    para_ng = arlib.load("speech-paraformer-noglance", device).model
    test = spoken_utterances("test", n=400)[: 100 if args.quick else 400]

    @torch.no_grad()
    def encode(batch):
        feats, lengths = speech_features([u.waveform for u in batch])
        hidden, out_lengths = ctc.encoder(feats.to(device), lengths.to(device))
        return hidden, out_lengths

    @torch.no_grad()
    def run_ctc(batch, beam=None):
        hidden, lengths = encode(batch)
        log_probs = ctc.head(hidden).log_softmax(-1)
        if beam is None:
            return [vocab.decode(ids) for ids in greedy_decode(log_probs, lengths)]
        return [vocab.decode(prefix_beam_search(log_probs[i, :n].cpu(), beam=beam)[0][0])
                for i, n in enumerate(lengths.tolist())]

    @torch.no_grad()
    def run_aed(batch, beam=None, model=aed, units=vocab):
        memory, lengths = encode(batch)
        if beam is None:
            return [units.decode(ids) for ids in model.greedy(memory, lengths)[0]]
        return [units.decode(model.beam_search(memory[i:i + 1], lengths[i:i + 1], beam=beam)[0][0])
                for i in range(len(batch))]

    @torch.no_grad()
    def run_para(model, batch):
        memory, lengths = encode(batch)
        return [word_vocab.decode(ids) for ids in model.decode(memory, lengths)]

    recognizers = {"AED chars, greedy": run_aed, "AED chars, beam 4": lambda b: run_aed(b, beam=4),
                   "AED words, greedy": lambda b: run_aed(b, model=aed_words, units=word_vocab),
                   "CTC chars, greedy": run_ctc, "CTC chars, prefix beam 8": lambda b: run_ctc(b, beam=8),
                   "Paraformer words": lambda b: run_para(para, b),
                   "Paraformer words, no glancing": lambda b: run_para(para_ng, b)}
    if args.batch > 1:
        recognizers = {k: v for k, v in recognizers.items() if "beam" not in k}
        test = sorted(test, key=lambda u: u.waveform.numel())  # length-bucketed batches: little padding
    batches = [test[i:i + args.batch] for i in range(0, len(test), args.batch)]
    for fn in recognizers.values():  # warm-up: lazy CUDA kernels, allocator, caches
        fn(batches[0])
    seconds = dict.fromkeys(recognizers, 0.0)
    outputs = {name: [] for name in recognizers}
    for batch in batches:
        for name, fn in recognizers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[name] += fn(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    audio = sum(u.duration for u in test)
    refs = [u.transcript for u in test]
    base, word_base = seconds["AED chars, greedy"], seconds["AED words, greedy"]
    print(f"{len(test)} test utterances ({audio:.0f} s of audio, unseen voices) on {device}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'recognizer':>30} | {'WER':>6} | {'RTF':>8} | {'vs AED chars':>12} | {'vs AED words':>12}")
    for name in recognizers:
        print(f"{name:>30} | {word_error_rate(refs, outputs[name]):6.3f} | {seconds[name] / audio:8.5f} | "
              f"{base / seconds[name]:11.1f}x | {word_base / seconds[name]:11.1f}x")


if __name__ == "__main__":
    main()
