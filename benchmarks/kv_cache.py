"""Where a decode step's time goes: the KV cache's share, measured on the book's GPT and modelled for 7B models.

    python benchmarks/kv_cache.py                 # cpu (and cuda if present), contexts 16..256, batches 1 and 16
    python benchmarks/kv_cache.py --quick         # contexts 16 64 256, fewer repeats
    python benchmarks/kv_cache.py --devices cpu --out data/results/kv-decode-cpu.json

For each device, batch size and context n, ``arlib.serving.memory.decode_step_profile`` times one cached
decode step of ``shakespeare-target`` (float32) that attends over n positions, its prompt taken from the
held-out split: the whole step, the time inside the cache's attend (all layers), and the step whose
attention reads only the new key, the three taking turns step by step; medians of the repeats, the smallest
over rounds. Beside the measured shares stands the byte model's prediction for the same model (the cache's
share of the bytes a step reads, ``decode_traffic``), then the byte model for the published 7B-class
shapes in fp16, where a memory-bound GPU step takes about bytes / bandwidth. Writes one JSON per device
(device name, date, torch version, threads, the rows) to ``--out`` (``{device}`` is replaced by cpu or
cuda) and prints the tables. Compare shares across machines, not milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

import arlib
from arlib.data import shakespeare
from arlib.serving.memory import (
    SEVEN_B,
    ModelShape,
    crossover_context,
    decode_step_profile,
    decode_traffic,
    request_bytes,
    requests_that_fit,
)

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (the platform's processor elsewhere)."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def held_out_prompt(tokenizer, batch_size: int, length: int) -> torch.Tensor:
    """(batch_size, length) token ids: one stretch of the held-out split per row, evenly spaced."""
    val = shakespeare().val
    stride = (len(val) - length) // batch_size
    return torch.stack([tokenizer.encode(val[i * stride:i * stride + length]) for i in range(batch_size)])


def profile_device(device: str, contexts, batch_sizes, repeats: int, rounds: int) -> dict:
    """Measured rows on one device, with the byte model's prediction for the same model beside each."""
    checkpoint = arlib.load("shakespeare-target", device)
    model, tokenizer = checkpoint.model.eval(), checkpoint.tokenizer
    shape = ModelShape.from_config(model.config, "shakespeare-target", model.num_params())
    rows = []
    for batch_size in batch_sizes:
        prompt = held_out_prompt(tokenizer, batch_size, max(contexts)).to(device)
        for r in decode_step_profile(model, contexts, batch_size, repeats, rounds=rounds, prompt=prompt):
            traffic = decode_traffic(shape, r.context, batch_size, bytes_per_value=4)  # float32
            rows.append({"context": r.context, "batch_size": batch_size, "step_ms": r.step_s * 1e3,
                         "attend_ms": r.attend_s * 1e3, "one_key_ms": r.one_key_s * 1e3,
                         "attend_share": r.attend_share, "growth_share": r.growth_share,
                         "cache_bytes_read": traffic.cache_bytes, "weight_bytes_read": traffic.weight_bytes,
                         "byte_model_cache_share": traffic.cache_share})
    return {"model": "shakespeare-target", "n_params": model.num_params(), "dtype": "float32",
            "shape": {"n_layer": shape.n_layer, "n_head": shape.n_head, "n_kv_head": shape.n_kv_head,
                      "head_dim": shape.head_dim, "block_size": shape.context},
            "rows": rows}


def seven_b_model(contexts=(1024, 4096), batch_sizes=(1, 16), memory_gib: int = 80) -> list[dict]:
    """The byte model for the published 7B-class shapes, fp16 weights and cache."""
    out = []
    for s in SEVEN_B:
        out.append({"name": s.name, "source": s.source, "n_params": s.n_params, "n_kv_head": s.n_kv_head,
                    "kv_bytes_per_token": s.kv_bytes_per_token(), "request_bytes_4096": request_bytes(s, 4096),
                    f"requests_in_{memory_gib}_gib_at_4096": requests_that_fit(s, memory_gib * GiB, 4096),
                    "crossover_context": {b: crossover_context(s, b) for b in batch_sizes},
                    "cache_share": {f"n={n},B={b}": decode_traffic(s, n, b).cache_share
                                    for n in contexts for b in batch_sizes},
                    "cache_intensity": decode_traffic(s, 4096).cache_intensity})
    return out


def print_measured(result: dict) -> None:
    print(f"\n{result['device']} ({result['device_name']}), {result['threads']} thread(s), torch {result['torch']}: "
          f"{result['model']} ({result['n_params']:,} parameters, float32); median of {result['repeats']} steps, "
          f"best of {result['rounds']} rounds; load average {result['load_average'][0]} -> {result['load_average'][1]}")
    header = (f"{'B':>3} | {'n':>4} | {'step ms':>7} | {'attend ms':>9} | {'1-key ms':>8} | {'attend %':>8} | "
              f"{'growth %':>8} | {'byte model %':>12}")
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        print(f"{r['batch_size']:>3} | {r['context']:>4} | {r['step_ms']:7.3f} | {r['attend_ms']:9.3f} | "
              f"{r['one_key_ms']:8.3f} | {100 * r['attend_share']:7.1f}% | {100 * r['growth_share']:7.1f}% | "
              f"{100 * r['byte_model_cache_share']:11.1f}%")
    print("attend: time inside the cache's attend; growth: step minus the step attending over its own key only; "
          "byte model: the cache's share of the bytes a step reads")


def print_seven_b(rows: list[dict]) -> None:
    print("\nbyte model for 7B-class shapes, fp16 (a memory-bound GPU step: time ~ bytes read / bandwidth)")
    header = (f"{'model':<24} | {'KiB/token':>9} | {'GiB @4096':>9} | {'fit 80 GiB':>10} | {'n*: B=1':>8} | "
              f"{'B=16':>6} | {'share n=4096 B=1':>16} | {'B=16':>5} | {'FLOP/B cache':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<24} | {r['kv_bytes_per_token'] / 1024:9.0f} | {r['request_bytes_4096'] / GiB:9.2f} | "
              f"{r['requests_in_80_gib_at_4096']:>10} | {r['crossover_context'][1]:8.0f} | "
              f"{r['crossover_context'][16]:6.0f} | {100 * r['cache_share']['n=4096,B=1']:15.1f}% | "
              f"{100 * r['cache_share']['n=4096,B=16']:4.0f}% | {r['cache_intensity']:12.0f}")
    print("n*: the context at which the batch's caches weigh as much as the weights; FLOP/B cache: FLOPs per "
          "byte of cache read, whatever the batch (the weights' is B)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if present")
    parser.add_argument("--contexts", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per measurement (the median is kept)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (the smallest median is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="contexts 16 64 256, 10 repeats, 1 round")
    parser.add_argument("--out", default="data/results/kv-decode-{device}.json",
                        help="JSON path; {device} becomes cpu or cuda")
    args = parser.parse_args(argv)
    if args.quick:
        args.contexts, args.repeats, args.rounds = [16, 64, 256], 10, 1
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if len(devices) > 1 and "{device}" not in args.out:
        parser.error("--out must contain {device} when several devices run")
    torch.set_num_threads(args.threads)

    seven_b = seven_b_model()
    for device in devices:
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        result = {"device": device, "device_name": device_name(device),
                  "date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "repeats": args.repeats, "rounds": args.rounds,
                  "method": "arlib.serving.memory.decode_step_profile: per context n (positions attended), the "
                            "cache prefilled to n - 1 held-out tokens, single-token steps rolled back with crop; "
                            "step_ms the whole step, attend_ms the time inside KVCache.attend (TimedCache), "
                            "one_key_ms the step attending over its own key only (OneKeyCache)",
                  **profile_device(device, args.contexts, args.batch_sizes, args.repeats, args.rounds),
                  "seven_b_fp16": seven_b}
        # the machine's 1-minute load average before and after: other work on the cores inflates the times
        result["load_average"] = [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None]
        out = Path(args.out.format(device=device))
        out = out if out.is_absolute() else ROOT / out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print_measured(result)
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    print_seven_b(seven_b)


if __name__ == "__main__":
    main()
