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

The serving simulator that compares paging with contiguous reservation is :mod:`arlib.serving.scheduler`.

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
"""

from __future__ import annotations

import torch

from arlib.serving._checks import attend_args, device_dtype
from arlib.text.gpt import GPTConfig, KVCache, attention, causal_mask
from arlib.validate import int_at_least, int_in_range, positive_int

__all__ = ["OutOfBlocksError", "BlockAllocator", "PagedKVCache", "blocks_for"]


def blocks_for(n_positions: int, block_size: int) -> int:
    """Blocks of ``block_size`` positions needed to hold ``n_positions``: ceil(n / B)."""
    int_at_least(n_positions, "n_positions", 0)
    positive_int(block_size, "block_size")
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
        device_dtype(device, dtype)
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
        L, _, H_kv, _, D = self.k_pool.shape
        attend_args(layer, L, q, k, v, self.batch_size, H_kv, D, self.block_size - self.length)
        start, T = self.length, q.shape[2]
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
        int_in_range(T, "T", 0, self.block_size - self.length)
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
