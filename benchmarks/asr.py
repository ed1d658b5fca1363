"""Speech recognition speed and accuracy on unseen voices, every recognizer of chapter 5 in one run: the
hybrid model's attention decoder over characters (greedy, beam 4, attention rescoring of CTC's 8-best
from the prefix and the lexicon beam, joint CTC/attention beam 4), the word attention decoder, CTC over
characters (greedy, prefix beam 8, lexicon beam 8) and over words, Paraformer (with and without glancing)
and CASS-NAT.

    python benchmarks/asr.py                  # 400 test utterances: batch 1, then length-bucketed batches of 32
    python benchmarks/asr.py --quick          # 100
    python benchmarks/asr.py --device cuda    # on a GPU (the JSON is labelled with the device and date)

Every recognizer shares the ``speech-hybrid`` encoder. The real-time factor (RTF) is processing time over
audio duration, features included; recognizers take turns on each utterance (or batch) so that they share
the machine's state. Batched decoding is timed for the recognizers whose search runs on a batch at once;
the searches over hypotheses (beam, rescoring, joint, prefix and lexicon beams) run one utterance at a
time. Compare ratios across machines, not seconds. The result is written to
``data/results/asr-{device}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from kv_cache import device_name  # benchmarks/ is on the path when a benchmark runs

import arlib
from arlib.data import spoken_utterances
from arlib.speech.ctc import greedy_decode, prefix_beam_search
from arlib.speech.decoding import attention_rescore, joint_beam_search, lexicon_beam_search
from arlib.speech.error_rates import wer_interval
from arlib.speech.models import TranscriptVocab, speech_features

ROOT = Path(__file__).resolve().parents[1]


def build(device):
    """name -> (transcribe(list of utterances) -> list of str, whether it decodes a batch at once)."""
    chars, words = TranscriptVocab(), TranscriptVocab(unit="word")
    hybrid = arlib.load("speech-hybrid", device).model
    aed_words, ctc_words, para, para_ng, cass = (arlib.load(name, device).model for name in (
        "speech-aed-words", "speech-ctc-words", "speech-paraformer", "speech-paraformer-noglance", "speech-cass-nat"))

    @torch.no_grad()
    def encode(batch):
        feats, lengths = speech_features([u.waveform for u in batch])
        return hybrid.encoder(feats.to(device), lengths.to(device))

    @torch.no_grad()
    def per_utterance(search):
        """A search over one utterance's memory and CTC posteriors, run on each utterance of the batch."""
        def run(batch):
            memory, lengths = encode(batch)
            log_probs = hybrid.ctc.head(memory).log_softmax(-1)
            return [search(memory[b:b + 1], lengths[b:b + 1], log_probs[b, :n].cpu())
                    for b, n in enumerate(lengths.tolist())]
        return run

    @torch.no_grad()
    def ctc_greedy(batch, head=None):
        memory, lengths = encode(batch)
        if head is None:
            return [chars.decode(ids) for ids in greedy_decode(hybrid.ctc.head(memory), lengths)]
        return [words.decode(ids) for ids in greedy_decode(*head(memory, lengths))]

    @torch.no_grad()
    def greedy_aed(batch, model, units):
        return [units.decode(ids) for ids in model.greedy(*encode(batch))[0]]

    @torch.no_grad()
    def non_autoregressive(batch, model):
        memory, lengths = encode(batch)
        if model is cass:
            return [words.decode(ids) for ids in cass.decode(memory, lengths, ctc_words(memory, lengths)[0])]
        return [words.decode(ids) for ids in model.decode(memory, lengths)]

    def rescore(lexicon):
        def run(memory, lengths, lp):
            nbest = lexicon_beam_search(lp, chars, beam=8) if lexicon else prefix_beam_search(lp, beam=8)
            best = attention_rescore(hybrid.decoder, memory, lengths, nbest, ctc_weight=0.5)
            return chars.decode(list(best[0][0]))
        return run

    return {
        "AED chars, greedy": (lambda b: greedy_aed(b, hybrid.decoder, chars), True),
        "AED chars, beam 4": (per_utterance(lambda m, n, lp: chars.decode(
            hybrid.decoder.beam_search(m, n, beam=4)[0][0])), False),
        "AED chars, rescoring prefix 8-best": (per_utterance(rescore(False)), False),
        "AED chars, rescoring lexicon 8-best": (per_utterance(rescore(True)), False),
        "AED chars, joint CTC/attention beam 4": (per_utterance(lambda m, n, lp: chars.decode(list(
            joint_beam_search(hybrid.decoder, m, n, lp, beam=4, ctc_weight=0.3)[0][0]))), False),
        "AED words, greedy": (lambda b: greedy_aed(b, aed_words, words), True),
        "CTC chars, greedy": (ctc_greedy, True),
        "CTC chars, prefix beam 8": (per_utterance(lambda m, n, lp: chars.decode(
            list(prefix_beam_search(lp, beam=8)[0][0]))), False),
        "CTC chars, lexicon beam 8": (per_utterance(lambda m, n, lp: chars.decode(
            list(lexicon_beam_search(lp, chars, beam=8)[0][0]))), False),
        "CTC words, greedy": (lambda b: ctc_greedy(b, ctc_words), True),
        "Paraformer words": (lambda b: non_autoregressive(b, para), True),
        "Paraformer words, no glancing": (lambda b: non_autoregressive(b, para_ng), True),
        "CASS-NAT words": (lambda b: non_autoregressive(b, cass), True),
        "features + encoder only": (lambda b: [""] * len(encode(b)[1]), True),
    }


def timed_run(recognizers, batches, device) -> tuple[dict, dict]:
    """Seconds and outputs per recognizer, the recognizers taking turns on each batch."""
    for fn in recognizers.values():  # warm-up: lazy CUDA kernels, allocator, caches
        fn(batches[0])
    seconds, outputs = dict.fromkeys(recognizers, 0.0), {name: [] for name in recognizers}
    for batch in batches:
        for name, fn in recognizers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[name] += fn(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    return seconds, outputs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 test utterances instead of 400")
    parser.add_argument("--batch", type=int, default=32, help="utterances per batch in the batched run")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--out", default="data/results/asr-{device}.json", help="JSON path; {device}: cpu, cuda")
    args = parser.parse_args(argv)
    device = arlib.setup(seed=0, device=args.device)
    test = spoken_utterances("test", n=400)[: 100 if args.quick else 400]
    systems = build(device)
    audio = sum(u.duration for u in test)
    refs = [u.transcript for u in test]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    one_seconds, outputs = timed_run({k: fn for k, (fn, _) in systems.items()}, [[u] for u in test], device)
    by_length = sorted(test, key=lambda u: u.waveform.numel())  # length-bucketed batches: little padding
    batches = [by_length[i:i + args.batch] for i in range(0, len(by_length), args.batch)]
    many_seconds, _ = timed_run({k: fn for k, (fn, batched) in systems.items() if batched}, batches, device)
    rows = {}
    for name in systems:
        wer, low, high = wer_interval(refs, outputs[name]) if name != "features + encoder only" else (None,) * 3
        rows[name] = {"wer": wer, "wer_95": [low, high], "rtf_batch1": one_seconds[name] / audio,
                      f"rtf_batch{args.batch}": many_seconds[name] / audio if name in many_seconds else None}
    result = {"device": device.type, "device_name": device_name(device.type),
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "utterances": len(test), "audio_seconds": round(audio, 1),
              "batch": args.batch, "method": "RTF = seconds / audio seconds, features included; recognizers take "
              "turns on each utterance (batch 1) or length-bucketed batch; WER with a 95 % bootstrap interval",
              "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
              "recognizers": rows}
    out = Path(args.out.format(device=device.type))
    out = out if out.is_absolute() else ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    base = rows["AED chars, greedy"]["rtf_batch1"]
    print(f"{len(test)} test utterances ({audio:.0f} s of audio, unseen voices) on {result['device_name']}, "
          f"{result['threads']} threads")
    print(f"{'recognizer':>38} | {'WER [95 %]':>21} | {'RTF batch 1':>11} | {'vs AED':>6} | RTF batch {args.batch}")
    for name, row in rows.items():
        wer = f"{row['wer']:6.3f} [{row['wer_95'][0]:.3f}, {row['wer_95'][1]:.3f}]" if row["wer"] is not None else "-"
        many = row[f"rtf_batch{args.batch}"]
        print(f"{name:>38} | {wer:>21} | {row['rtf_batch1']:11.5f} | {base / row['rtf_batch1']:5.1f}x | "
              + (f"{many:.5f}" if many is not None else "-"))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
