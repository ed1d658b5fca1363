"""Paging the KV cache: PagedAttention and vLLM's block manager (Kwon et al., SOSP 2023), chapter 7.

Before paging, a serving system reserved one contiguous stretch of cache per request, long enough for
the longest sequence it might become. Kwon et al. observe (sec. 3, fig. 3) that most of that memory holds
no key or value: slots *reserved* for tokens not generated yet, slots never used (*internal
fragmentation*: the request ends before the reservation does) and gaps the allocator cannot hand out
(*external fragmentation*). Their remedy is the operating system's: cut the cache into fixed-size KV
blocks of B positions, give each sequence a *block table* (logical block i -> physical block), allocate
a block only when the sequence fills the previous one, and let sequences share physical blocks with
reference counts and copy-on-write (sec. 4.2-4.4). The waste shrinks to the unused tail of each
sequence's last block.

What this module follows, and where:

- :class:`BlockAllocator`: the free list of physical blocks with reference counts (sec. 4.2, 4.4), as
  in vLLM v0.2 (``PhysicalTokenBlock.ref_count`` in ``vllm/block.py`` of v0.2.7, ``BlockAllocator`` and
  ``BlockSpaceManager.append_slot`` / ``fork`` in ``vllm/core/block_manager.py`` of that release line:
  read for the design, not copied).
- :class:`PagedKVCache`: the block tables and the pool of physical blocks, with PagedAttention's
  block-wise attention (sec. 4.1, eq. 4: query i attends to the key blocks K_j and value blocks V_j
  of its sequence, found through the block table). Allocation on demand (sec. 4.3), ``fork`` and
  copy-on-write at block granularity (sec. 4.4; vLLM's ``append_slot`` copies the last block when
  its reference count exceeds one), freeing on ``crop``.
- :func:`simulate_serving`: iteration-level scheduling (Orca, Yu et al. 2022, as vLLM uses it) with
  first-come-first-served admission, compared with Orca-style contiguous reservation. The
  reservation rules are the paper's baselines (sec. 6.1): Orca (Max) reserves the whole context, Orca
  (Pow2) the next power of two of the true length, Orca (Oracle) exactly the true length. Under
  paging, a running request that finds no free block preempts the most recently admitted request,
  which is recomputed later (sec. 4.5, "all-or-nothing" eviction by recomputation).
- :func:`parallel_sampling_blocks`: n samples of one prompt sharing the prompt's blocks (sec. 4.4).

The book's simplifications (not the paper's):

- PagedAttention proper is a fused GPU kernel that reads the blocks where they lie (sec. 5.1). Here
  :meth:`PagedKVCache.attend` gathers each row's blocks into a contiguous tensor with one indexing
  operation and calls the book's :func:`~arlib.text.gpt.attention`: the same numbers (eq. 4 is ordinary
  attention over the row's keys, taken block by block), plus the cost of the copy: decoding through it
  ran 1.2-1.5x slower than the contiguous cache on the book's target on a CPU (measured when it was
  written, batch 1 and 8), which a real kernel avoids.
- The pool holds every layer's copy of a block under one block number (vLLM keeps one tensor per layer
  indexed by the same block table): one allocation serves all layers.
- Every row of a batch has the same length, because the book's GPT decodes a batch in lock-step; rows
  differ in which physical blocks they use, not in how many.
- The simulator counts tokens, not seconds: one step generates one token for every running request
  (the prefill of an admitted request is its first step, as in Orca; vLLM v0.2 runs prompt steps apart
  from decode steps), no watermark, no swapping to CPU (recomputation only), and a
  request occupies ``prompt + generated`` slots in the step that produces a token (the slot of the
  token just sampled is allocated with it, ready for the next step's forward).
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass

import torch

from arlib.text.gpt import GPTConfig, KVCache, attention, causal_mask
from arlib.validate import int_at_least, int_in_range, is_int, number_in, positive_int

__all__ = ["OutOfBlocksError", "BlockAllocator", "PagedKVCache", "blocks_for", "Request", "speech_lengths",
           "make_workload", "reservation", "simulate_serving", "parallel_sampling_blocks", "POLICIES",
           "RESERVATIONS"]

POLICIES = ("contiguous", "paged")
RESERVATIONS = ("max", "pow2", "oracle")  # Orca (Max), Orca (Pow2), Orca (Oracle): Kwon et al. sec. 6.1


def blocks_for(n_positions: int, block_size: int) -> int:
    """Blocks of ``block_size`` positions needed to hold ``n_positions``: ceil(n / B)."""
    return -(-n_positions // block_size)


# --- the block allocator ----------------------------------------------------------------------------


class OutOfBlocksError(RuntimeError):
    """Every physical block is in use: the caller must wait, preempt a request or grow the pool."""


class BlockAllocator:
    """A pool of ``n_blocks`` physical blocks: a free list and a reference count per block (sec. 4.2, 4.4).

    ``allocate`` takes a free block (reference count 1), ``share`` adds a reference (another sequence maps
    the block), ``free`` drops one and returns the block to the free list when none is left."""

    def __init__(self, n_blocks: int):
        self.n_blocks = positive_int(n_blocks, "n_blocks")
        self._free = list(range(n_blocks - 1, -1, -1))  # a stack: block 0 is handed out first
        self._refs = [0] * n_blocks

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def n_used(self) -> int:
        return self.n_blocks - len(self._free)

    def refcount(self, block: int) -> int:
        """How many sequences map ``block`` (0: it is free)."""
        int_in_range(block, "block", 0, self.n_blocks - 1)
        return self._refs[block]

    def allocate(self) -> int:
        """A free block, now referenced once; :class:`OutOfBlocksError` when none is free."""
        if not self._free:
            raise OutOfBlocksError(f"allocate: all {self.n_blocks} blocks are in use")
        block = self._free.pop()
        self._refs[block] = 1
        return block

    def share(self, block: int) -> int:
        """One more reference to the allocated ``block`` (a fork maps it into another sequence)."""
        self._check_allocated(block)
        self._refs[block] += 1
        return block

    def free(self, block: int) -> None:
        """Drop one reference to ``block``; at zero it goes back to the free list."""
        self._check_allocated(block)
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)

    def _check_allocated(self, block) -> None:
        int_in_range(block, "block", 0, self.n_blocks - 1)
        if self._refs[block] == 0:
            raise ValueError(f"block: expected an allocated block, got {block}, which is free (a double free?)")


# --- the paged cache --------------------------------------------------------------------------------


class PagedKVCache(KVCache):
    """A KV cache in blocks of ``block_size`` positions, reached through one block table per row.

    The pool ``k_pool``, ``v_pool`` has shape (L, n_blocks, H_kv, block_size, D); ``tables[row][i]`` is the
    physical block holding positions i B .. (i + 1) B - 1 of that row. Blocks are allocated as the rows
    grow, shared by :meth:`fork` and copied before a row writes into a shared one. The book's GPT runs on it
    unchanged: ``model(idx, cache=PagedKVCache(model.config, batch, n_blocks))``.

    The argument ``block_size`` is the paper's KV block size B, kept as ``kv_block_size``; the attribute
    ``block_size`` keeps its meaning in :class:`~arlib.text.gpt.KVCache`, the context length.
    """

    def __init__(self, config: GPTConfig, batch_size: int, n_blocks: int, block_size: int = 16,
                 device=None, dtype=torch.float32):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config: expected GPTConfig, got {type(config).__name__}")
        positive_int(batch_size, "batch_size")
        positive_int(block_size, "block_size")
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, n_blocks, config.kv_heads, block_size, head_dim)
        self.allocator = BlockAllocator(n_blocks)  # checks n_blocks
        self.k_pool = torch.zeros(shape, device=device, dtype=dtype)  # (L, N, H_kv, B, D)
        self.v_pool = torch.zeros(shape, device=device, dtype=dtype)
        self.tables: list[list[int]] = [[] for _ in range(batch_size)]  # row -> physical block per logical block
        self.length = 0
        self.block_size = config.block_size  # the context, as in KVCache
        self.kv_block_size = block_size
        self._table = None  # (B, n_logical) long tensor of the forward being run
        self._ready_for = None  # (start, T) whose blocks are allocated and writable

    # -- sizes --

    @property
    def batch_size(self) -> int:
        return len(self.tables)

    @property
    def n_layers(self) -> int:
        return self.k_pool.shape[0]

    @property
    def bytes_per_value(self) -> int:
        """What one stored number counts for: ``bytes_per_number`` where the cache sets it (chapter 7 counts
        16-bit numbers, see :class:`~arlib.text.gpt.KVCache`), else the pool's element size."""
        return getattr(self, "bytes_per_number", None) or self.k_pool.element_size()

    @property
    def bytes_per_block(self) -> int:
        """Keys and values of one block, all layers: 2 L H_kv B D x bytes per value."""
        L, _, H, B, D = self.k_pool.shape
        return 2 * L * H * B * D * self.bytes_per_value

    def stored_bytes(self) -> int:
        """Bytes of the physical blocks in use, each counted once however many rows share it."""
        return self.allocator.n_used * self.bytes_per_block

    def waste_bytes(self) -> int:
        """Internal fragmentation: the bytes of the unfilled slots of the blocks in use (the tail of each
        row's last block). Shared blocks count once."""
        B = self.kv_block_size
        filled = {(block, i): min(B, self.length - i * B) for table in self.tables for i, block in enumerate(table)}
        return self.stored_bytes() - sum(filled.values()) * self.bytes_per_block // B

    def pool_bytes(self) -> int:
        """Bytes of the whole preallocated pool, blocks in use or not."""
        return 2 * self.k_pool.numel() * self.bytes_per_value

    def block_table(self, row: int) -> list[int]:
        """A copy of ``row``'s block table: the physical block of each logical block."""
        int_in_range(row, "row", 0, self.batch_size - 1)
        return list(self.tables[row])

    # -- sharing --

    def fork(self, src_row: int, dst_row: int | None = None) -> int:
        """Let ``dst_row`` share every block of ``src_row`` (sec. 4.4: n samples of one prompt map its
        blocks, which are copied only when a sample writes into one). ``dst_row=None`` appends a new row
        (the batch grows by one); an existing ``dst_row`` first releases its own blocks. Returns the row."""
        int_in_range(src_row, "src_row", 0, self.batch_size - 1)
        if dst_row is None:
            self.tables.append([])
            dst_row = self.batch_size - 1
        else:
            int_in_range(dst_row, "dst_row", 0, self.batch_size - 1)
            if dst_row == src_row:
                raise ValueError(f"dst_row: expected a row other than src_row={src_row}, got {dst_row}")
            self._release(dst_row)
        self.tables[dst_row] = [self.allocator.share(block) for block in self.tables[src_row]]
        self._ready_for = None
        return dst_row

    def remove_row(self, row: int) -> None:
        """Drop ``row`` from the batch (a finished sample) and release its blocks; later rows move up."""
        int_in_range(row, "row", 0, self.batch_size - 1)
        if self.batch_size == 1:
            raise ValueError("row: cannot remove the only row of the batch")
        self._release(row)
        del self.tables[row]
        self._ready_for = None

    def _release(self, row: int) -> None:
        for block in self.tables[row]:
            self.allocator.free(block)
        self.tables[row] = []

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on and free the blocks no row needs any more."""
        int_in_range(length, "length", 0, self.length)
        keep = blocks_for(length, self.kv_block_size)
        for table in self.tables:
            for block in table[keep:]:
                self.allocator.free(block)
            del table[keep:]
        self.length = length
        self._ready_for = None

    # -- attention --

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None,
               dropout: float = 0.0) -> torch.Tensor:
        """Write the T new keys and values through the block tables, then attend over the row's blocks.

        q (B, H, T, D); k, v (B, H_kv, T, D); returns (B, H, T, D), as
        :meth:`arlib.text.gpt.KVCache.attend`."""
        start, T = self.length, q.shape[2]
        if q.shape[0] != self.batch_size:
            raise ValueError(f"q: expected a batch of {self.batch_size} rows, got {q.shape[0]}")
        if self._ready_for != (start, T):  # first layer of this forward: blocks for all layers at once
            self._make_writable(start, T)
            self._table = torch.tensor(self.tables, dtype=torch.long, device=self.k_pool.device)
            self._ready_for = (start, T)
        self._write(layer, start, k, v)
        keys, values = self._gather(layer, start + T)  # (B, H_kv, start + T, D)
        if mask is None:  # one new query sees every key: no mask needed
            mask = True if T == 1 else causal_mask(T, start, q.device)
        return attention(q, keys, values, mask, dropout)

    def advance(self, T: int) -> None:
        self.length += T
        self._ready_for = None

    def _make_writable(self, start: int, T: int) -> None:
        """Give every row a private block for each logical block that positions start .. start+T-1 touch:
        a fresh one past the end of its table (sec. 4.3), a copy of a shared one (copy-on-write, sec. 4.4).
        Checks first that the free blocks suffice, so that a failure leaves the cache unchanged."""
        if start + T > self.block_size:
            raise ValueError(f"T: {start + T} positions exceed the context of {self.block_size}")
        first, last = start // self.kv_block_size, (start + T - 1) // self.kv_block_size
        refs = {}  # references left to each shared block as the rows below copy it, in the same order
        needed = 0
        for table in self.tables:
            for i in range(first, last + 1):
                if i >= len(table):
                    needed += 1
                else:
                    r = refs.setdefault(table[i], self.allocator.refcount(table[i]))
                    if r > 1:  # the last row still mapping it writes in place
                        needed, refs[table[i]] = needed + 1, r - 1
        if needed > self.allocator.n_free:
            raise OutOfBlocksError(f"T: writing {T} positions needs {needed} blocks, "
                                   f"{self.allocator.n_free} of {self.allocator.n_blocks} are free")
        for table in self.tables:
            for i in range(first, last + 1):
                if i == len(table):
                    table.append(self.allocator.allocate())
                elif self.allocator.refcount(table[i]) > 1:
                    table[i] = self._copy_on_write(table[i])

    def _copy_on_write(self, block: int) -> int:
        """A private copy of the shared ``block`` (every layer's keys and values); one reference less to it."""
        new = self.allocator.allocate()
        self.k_pool[:, new] = self.k_pool[:, block]
        self.v_pool[:, new] = self.v_pool[:, block]
        self.allocator.free(block)
        return new

    def _write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (B, H_kv, T, D) of positions start .. start+T-1 in the slots the tables name."""
        B, T = k.shape[0], k.shape[2]
        pos = torch.arange(start, start + T, device=self._table.device)  # (T,) absolute positions
        block = self._table[:, pos // self.kv_block_size]  # (B, T) physical block of each position
        slot = (pos % self.kv_block_size).expand(B, T)  # (B, T) its slot inside the block
        # pool[layer] is (N, H_kv, B_blk, D); indexing blocks and slots with (B, T) tensors around the head
        # axis gives (B, T, H_kv, D): one key vector per row, new position and head.
        self.k_pool[layer][block, :, slot] = k.transpose(1, 2)
        self.v_pool[layer][block, :, slot] = v.transpose(1, 2)

    def _gather(self, layer: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H_kv, S, D) of positions 0 .. S-1 of every row, read through the tables."""
        return self._read(self.k_pool[layer], S), self._read(self.v_pool[layer], S)

    def _read(self, pool: torch.Tensor, S: int) -> torch.Tensor:
        B, n = self._table.shape
        _, H, block_size, D = pool.shape
        blocks = pool[self._table]  # (B, n, H_kv, B_blk, D): each row's blocks in logical order
        return blocks.transpose(1, 2).reshape(B, H, n * block_size, D)[:, :, :S]  # (B, H_kv, S, D)


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

    With ``share``, the prompt is prefilled once and every sample maps its blocks (a :class:`BlockAllocator`
    counts the references); a sample that writes into a block others still map copies it first. Without,
    every sample holds its own copy of the prompt. Step s writes position ``prompt_len + s`` of every
    sample still generating; sample i ends holding ``prompt_len + output_lens[i]`` positions and is
    released after its last step. Returns ``trace`` (blocks in use after the prefill and after each step),
    its ``peak`` and its ``mean``."""
    positive_int(prompt_len, "prompt_len")
    if not isinstance(output_lens, (list, tuple)) or not output_lens \
            or not all(is_int(n) and n > 0 for n in output_lens):
        raise ValueError(f"output_lens: expected a non-empty list of positive ints, got {output_lens!r}")
    positive_int(block_size, "block_size")
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
