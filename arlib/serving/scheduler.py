"""A model-free serving simulator: PagedAttention's paging against contiguous reservation (chapter 7).

Kwon et al. (SOSP 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention") compare vLLM's paged KV cache with serving systems that reserve one contiguous stretch
per request. This module replays that comparison in tokens, on workloads of real speeches:

- :func:`simulate_serving`: iteration-level scheduling (Orca, Yu et al. 2022, as vLLM uses it) with
  first-come-first-served admission, compared with Orca-style contiguous reservation. The
  reservation rules are the paper's baselines (sec. 6.1): Orca (Max) reserves the whole context, Orca
  (Pow2) the next power of two of the true length, Orca (Oracle) exactly the true length. Under
  paging, a running request that finds no free block preempts the most recently admitted request,
  which is recomputed later (sec. 4.5, "all-or-nothing" eviction by recomputation).
- :func:`parallel_sampling_blocks`: n samples of one prompt sharing the prompt's blocks (sec. 4.4),
  counted with :class:`~arlib.serving.paged.BlockAllocator`.

The book's simplifications (not the paper's): the simulator counts tokens, not seconds: one step
generates one token for every running request (the prefill of an admitted request is its first step, as
in Orca; vLLM v0.2 runs prompt steps apart from decode steps), no watermark, no swapping to CPU
(recomputation only, and not charged), and a request occupies ``prompt + generated`` slots in the step
that produces a token (the slot of the token just sampled is allocated with it, ready for the next
step's forward).
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass

from arlib.serving.paged import BlockAllocator, blocks_for
from arlib.validate import int_at_least, is_int, number_in, positive_int

__all__ = ["Request", "speech_lengths", "make_workload", "reservation", "simulate_serving",
           "parallel_sampling_blocks", "POLICIES", "RESERVATIONS"]

POLICIES = ("contiguous", "paged")
RESERVATIONS = ("max", "pow2", "oracle")  # Orca (Max), Orca (Pow2), Orca (Oracle): Kwon et al. sec. 6.1


# --- a serving workload -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request of a serving workload, in tokens and decode steps."""

    arrival: int  # the step at which it arrives
    prompt_len: int  # tokens of the prompt
    output_len: int  # tokens it generates (the scheduler does not know it, except Orca (Oracle))

    def __post_init__(self):
        int_at_least(self.arrival, "arrival", 0)
        positive_int(self.prompt_len, "prompt_len")
        positive_int(self.output_len, "output_len")

    @property
    def total(self) -> int:
        return self.prompt_len + self.output_len


_SPEAKER = re.compile(r"[A-Z][A-Z' -]*\.")  # "CLEOPATRA.", "FIRST CITIZEN.": a speech's first line


def speech_lengths(text: str) -> list[int]:
    """Lengths in characters of the speeches of a play text, in order: paragraphs (blank-line separated)
    whose first line names the speaker and which say something after it, counted with that line. The
    char-level models read characters, so these are token counts. Headings, stage directions and verse
    without a speaker are skipped."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    lengths = []
    for paragraph in text.split("\n\n"):
        lines = paragraph.strip("\n").split("\n")
        if len(lines) > 1 and _SPEAKER.fullmatch(lines[0]):  # a name, then what is said ("ACT I." is alone)
            lengths.append(len(paragraph))
    return lengths


def make_workload(lengths: list[int], n_requests: int, rate: float, max_len: int = 256,
                  seed: int = 0) -> list[Request]:
    """``n_requests`` requests: a speech as the prompt and the speech after it (the reply) as the output.

    Pairs of consecutive ``lengths`` (:func:`speech_lengths`) longer than ``max_len`` together are left
    out (the model's context); the rest are drawn uniformly with replacement. Arrivals form a Poisson
    process of ``rate`` requests per step (exponential gaps, as in Kwon et al. sec. 6.1), rounded down
    to steps. Deterministic given ``seed``."""
    if not isinstance(lengths, (list, tuple)) or not all(is_int(n) and n > 0 for n in lengths):
        raise ValueError(f"lengths: expected a list of positive ints, got {type(lengths).__name__}")
    positive_int(n_requests, "n_requests")
    number_in(rate, "rate", 0, bounds="(]")
    int_at_least(max_len, "max_len", 2)
    if not is_int(seed):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    pairs = [(p, n) for p, n in zip(lengths, lengths[1:]) if p + n <= max_len]
    if not pairs:
        raise ValueError(f"lengths: no two consecutive speeches fit in max_len={max_len}")
    rng = random.Random(seed)
    requests, now = [], 0.0
    for _ in range(n_requests):
        p, n = rng.choice(pairs)
        requests.append(Request(int(now), p, n))
        now += rng.expovariate(rate)
    return requests


# --- the serving simulator --------------------------------------------------------------------------


@dataclass
class _Running:
    """A request being served: tokens generated so far and the memory it holds."""

    index: int  # its position in the workload
    request: Request
    generated: int = 0  # output tokens so far
    recompute: bool = False  # preempted before: its next admission prefills prompt + generated again
    blocks: int = 0  # paged: physical blocks held
    offset: int = 0  # contiguous: start of its reservation
    reserved: int = 0  # contiguous: slots reserved

    def slots_next_step(self) -> int:
        """Slots it occupies during its next step: prompt, tokens so far and the one that step samples."""
        return self.request.prompt_len + self.generated + 1


def reservation(request: Request, reserve: str, max_len: int) -> int:
    """Slots a contiguous system reserves for ``request`` (Kwon et al. sec. 6.1 baselines): ``"max"`` the
    whole context, ``"pow2"`` the next power of two of its true length (capped by the context),
    ``"oracle"`` its true length."""
    if not isinstance(request, Request):
        raise ValueError(f"request: expected a Request, got {type(request).__name__}")
    positive_int(max_len, "max_len")
    if reserve == "max":
        return max_len
    if reserve == "pow2":
        return min(max_len, 1 << (request.total - 1).bit_length())
    if reserve == "oracle":
        return request.total
    raise ValueError(f"reserve: expected one of {RESERVATIONS}, got {reserve!r}")


class _FirstFit:
    """Contiguous reservations in a line of ``capacity`` slots, first fit (what a pre-paging system's
    allocator does with one buffer per request)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.taken: dict[int, int] = {}  # offset -> size

    def holes(self) -> list[int]:
        """Sizes of the free stretches, in address order."""
        sizes, at = [], 0
        for offset in sorted(self.taken):
            sizes.append(offset - at)
            at = offset + self.taken[offset]
        sizes.append(self.capacity - at)
        return [s for s in sizes if s > 0]

    def allocate(self, size: int) -> int | None:
        """The offset of a new reservation of ``size`` slots in the first hole that fits; None if none does."""
        at = 0  # the start of the hole before the next reservation
        for offset in sorted(self.taken):
            if offset - at >= size:
                break
            at = offset + self.taken[offset]
        else:
            if self.capacity - at < size:
                return None
        self.taken[at] = size
        return at

    def free(self, offset: int) -> None:
        del self.taken[offset]


def simulate_serving(requests: list[Request], capacity_tokens: int, policy: str, block_size: int = 16,
                     max_len: int = 256, reserve: str = "max") -> dict:
    """Serve ``requests`` step by step with a KV cache of ``capacity_tokens`` slots; model-free.

    Every step, each running request generates one token (iteration-level scheduling). Waiting
    requests are admitted first come, first served, while memory allows; the head of the queue
    blocks those behind it.

    - ``"contiguous"``: a request is admitted when a contiguous stretch of :func:`reservation` slots
      (``reserve``: ``"max"``, ``"pow2"``, ``"oracle"``) is free, and keeps it until it finishes.
    - ``"paged"``: ``capacity_tokens // block_size`` blocks; a request is admitted when its prompt (and
      first token) fits in the free blocks, and takes a block whenever it fills one. A running request
      that finds no free block preempts the most recently admitted one (all its blocks are freed; it
      returns to the head of the queue and is recomputed: prompt and generated tokens prefilled again).

    Returns a dict: ``steps`` (until the last request finishes), ``mean_batch`` (running requests, averaged
    over the steps), ``peak_batch``, ``throughput`` (output tokens per step), ``mean_wait`` (steps from
    arrival to first admission), ``mean_latency`` (arrival to last token), ``preemptions``,
    ``recomputed_tokens``, ``batch_trace`` (running requests per step), and ``memory``: slots averaged over
    the steps, split into ``used`` (keys and values held), ``internal`` (paged: unfilled tail of the last
    blocks; contiguous: reserved slots the request never fills), ``reserved`` (contiguous: slots it will
    fill later), ``external`` (contiguous: free slots at steps where the head of the queue would fit in
    the free memory but in no single free stretch; paged: none) and ``free``.
    """
    if not isinstance(requests, (list, tuple)) or not requests \
            or not all(isinstance(r, Request) for r in requests):
        raise ValueError(f"requests: expected a non-empty list of Request, got {type(requests).__name__}")
    positive_int(capacity_tokens, "capacity_tokens")
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    positive_int(block_size, "block_size")
    positive_int(max_len, "max_len")
    if reserve not in RESERVATIONS:
        raise ValueError(f"reserve: expected one of {RESERVATIONS}, got {reserve!r}")
    for i, r in enumerate(requests):
        if r.total > max_len:
            raise ValueError(f"requests: request {i} needs {r.total} positions, more than max_len={max_len}")
        need = (blocks_for(r.total, block_size) * block_size if policy == "paged"
                else reservation(r, reserve, max_len))
        if need > capacity_tokens:
            raise ValueError(f"capacity_tokens: request {i} alone needs {need} slots, got {capacity_tokens}")
    state = _PagedState(capacity_tokens, block_size) if policy == "paged" \
        else _ContiguousState(capacity_tokens, reserve, max_len)
    return _run(requests, state)


class _PagedState:
    """Memory of the paged policy: a count of free blocks (which block is which does not matter here)."""

    def __init__(self, capacity: int, block_size: int):
        self.capacity, self.block_size = capacity, block_size
        self.free_blocks = capacity // block_size

    def admit(self, live: _Running) -> bool:
        need = blocks_for(live.slots_next_step(), self.block_size)
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        live.blocks = need
        return True

    def grow(self, live: _Running) -> bool:
        """One more block if the next token starts one; False when none is free."""
        if blocks_for(live.slots_next_step(), self.block_size) <= live.blocks:
            return True
        if not self.free_blocks:
            return False
        self.free_blocks -= 1
        live.blocks += 1
        return True

    def release(self, live: _Running) -> None:
        self.free_blocks += live.blocks
        live.blocks = 0

    def memory(self, running: list[_Running], head: _Running | None) -> dict:
        used = sum(r.slots_next_step() for r in running)
        held = sum(r.blocks for r in running) * self.block_size
        return {"used": used, "internal": held - used, "reserved": 0, "external": 0,
                "free": self.capacity - held}


class _ContiguousState:
    """Memory of the contiguous policy: one first-fit reservation per running request."""

    def __init__(self, capacity: int, reserve: str, max_len: int):
        self.capacity, self.reserve, self.max_len = capacity, reserve, max_len
        self.line = _FirstFit(capacity)

    def admit(self, live: _Running) -> bool:
        size = reservation(live.request, self.reserve, self.max_len)
        offset = self.line.allocate(size)
        if offset is None:
            return False
        live.offset, live.reserved = offset, size
        return True

    def grow(self, live: _Running) -> bool:
        return True  # the reservation covers the whole request

    def release(self, live: _Running) -> None:
        self.line.free(live.offset)

    def memory(self, running: list[_Running], head: _Running | None) -> dict:
        used = sum(r.slots_next_step() for r in running)
        final = sum(r.request.total for r in running)
        held = sum(r.reserved for r in running)
        free = self.capacity - held
        external = 0
        if head is not None:  # free memory the head could use if it were one stretch
            need = reservation(head.request, self.reserve, self.max_len)
            if need <= free and max(self.line.holes(), default=0) < need:
                external = free
        return {"used": used, "internal": held - final, "reserved": final - used, "external": external,
                "free": free - external}


def _run(requests: list[Request], state) -> dict:
    """The step loop shared by both policies (see :func:`simulate_serving`)."""
    pending = deque(sorted(range(len(requests)), key=lambda i: (requests[i].arrival, i)))
    waiting: deque[_Running] = deque()
    running: list[_Running] = []  # in admission order: the last one is preempted first
    first_admit, finish = {}, {}
    trace, memory = [], {"used": 0, "internal": 0, "reserved": 0, "external": 0, "free": 0}
    preemptions = recomputed = 0
    step = 0
    while pending or waiting or running:
        while pending and requests[pending[0]].arrival <= step:
            i = pending.popleft()
            waiting.append(_Running(i, requests[i]))
        # 1. running requests, oldest first, take the block their next token needs; short of one, the
        #    most recently admitted request is preempted (the one asking, if it is the last)
        queue, running = deque(running), []
        while queue:
            live = queue.popleft()
            while not state.grow(live):
                victim = queue.pop() if queue else live
                state.release(victim)
                victim.recompute = True
                waiting.appendleft(victim)  # recomputed before anyone who arrived later
                preemptions += 1
                if victim is live:
                    break
            else:
                running.append(live)
        # 2. first come, first served admission while memory allows
        while waiting and state.admit(waiting[0]):
            live = waiting.popleft()
            if live.recompute:
                recomputed += live.request.prompt_len + live.generated
                live.recompute = False
            first_admit.setdefault(live.index, step)
            running.append(live)
        # 3. the step: record, then every running request emits a token
        trace.append(len(running))
        for key, value in state.memory(running, waiting[0] if waiting else None).items():
            memory[key] += value
        still = []
        for live in running:
            live.generated += 1
            if live.generated == live.request.output_len:
                state.release(live)
                finish[live.index] = step
            else:
                still.append(live)
        running = still
        step += 1
    n, tokens = len(requests), sum(r.output_len for r in requests)
    return {
        "steps": step,
        "mean_batch": sum(trace) / step,
        "peak_batch": max(trace),
        "throughput": tokens / step,
        "mean_wait": sum(first_admit[i] - requests[i].arrival for i in range(n)) / n,
        "mean_latency": sum(finish[i] + 1 - requests[i].arrival for i in range(n)) / n,
        "preemptions": preemptions,
        "recomputed_tokens": recomputed,
        "batch_trace": trace,
        "memory": {key: value / step for key, value in memory.items()},
    }


# --- parallel sampling ------------------------------------------------------------------------------


def parallel_sampling_blocks(prompt_len: int, output_lens: list[int], block_size: int = 16,
                             share: bool = True) -> dict:
    """Blocks in use while n samples of one prompt are generated in lock-step, model-free (sec. 4.4).

    With ``share``, the prompt is prefilled once and every sample maps its blocks (a
    :class:`~arlib.serving.paged.BlockAllocator` counts the references); a sample that writes into a
    block others still map copies it first. Without, every sample holds its own copy of the prompt.
    Step s writes position ``prompt_len + s`` of every sample still generating; sample i ends holding
    ``prompt_len + output_lens[i]`` positions and is released after its last step. Returns ``trace``
    (blocks in use after the prefill and after each step), its ``peak`` and its ``mean``."""
    positive_int(prompt_len, "prompt_len")
    if not isinstance(output_lens, (list, tuple)) or not output_lens \
            or not all(is_int(n) and n > 0 for n in output_lens):
        raise ValueError(f"output_lens: expected a non-empty list of positive ints, got {output_lens!r}")
    positive_int(block_size, "block_size")
    if not isinstance(share, bool):
        raise ValueError(f"share: expected a bool, got {share!r}")
    n = len(output_lens)
    alloc = BlockAllocator(n * blocks_for(prompt_len + max(output_lens), block_size))  # enough unshared
    prompt = [alloc.allocate() for _ in range(blocks_for(prompt_len, block_size))]
    copies = [[alloc.share(b) if share else alloc.allocate() for b in prompt] for _ in range(n - 1)]
    tables = [prompt] + copies  # sample -> physical blocks; None once released
    trace = [alloc.n_used]
    for step in range(max(output_lens)):
        j = (prompt_len + step) // block_size  # the logical block every live sample writes this step
        for table in tables:
            if table is None:
                continue
            if j == len(table):
                table.append(alloc.allocate())
            elif alloc.refcount(table[j]) > 1:  # copy-on-write (copying the data is not modelled here)
                alloc.free(table[j])
                table[j] = alloc.allocate()
        trace.append(alloc.n_used)
        for i, m in enumerate(output_lens):
            if tables[i] is not None and step + 1 == m:  # done: its blocks go back
                for b in tables[i]:
                    alloc.free(b)
                tables[i] = None
    return {"trace": trace, "peak": max(trace), "mean": sum(trace) / len(trace)}
