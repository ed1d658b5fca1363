"""Tests of arlib.serving.paged (the block allocator, the paged KV cache against the contiguous one) and of
arlib.serving.scheduler (the model-free serving simulator against numbers worked out by hand)."""

import pytest
import torch

from arlib.serving.paged import BlockAllocator, OutOfBlocksError, PagedKVCache
from arlib.serving.scheduler import (
    Request,
    make_workload,
    parallel_sampling_blocks,
    reservation,
    simulate_serving,
    speech_lengths,
)
from arlib.text.gpt import GPT, GPTConfig


def random_gpt(n_kv_head=None, seed=0, block_size=64) -> GPT:
    """A tiny GPT (4 heads, width 16) with large random weights, so that a misplaced key changes the logits."""
    config = GPTConfig(vocab_size=13, block_size=block_size, n_layer=2, n_head=4, n_embd=16, n_kv_head=n_kv_head)
    model = GPT(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * 0.5)
    return model.eval()


def run_chunks(model, cache, chunks):
    """Logits of every chunk fed in turn through ``cache``, concatenated along time."""
    with torch.no_grad():
        return torch.cat([model(x, cache=cache) for x in chunks], dim=1)


def chunks_of(seed, batch, sizes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 13, (batch, t), generator=g) for t in sizes]


# --- the allocator ----------------------------------------------------------------------------------


def test_allocator_counts_references():
    alloc = BlockAllocator(3)
    a, b = alloc.allocate(), alloc.allocate()
    assert a != b and alloc.n_free == 1 and alloc.n_used == 2
    alloc.share(a)
    assert alloc.refcount(a) == 2
    alloc.free(a)  # one reference left: still in use
    assert alloc.refcount(a) == 1 and alloc.n_free == 1
    alloc.free(a)
    assert alloc.refcount(a) == 0 and alloc.n_free == 2
    assert alloc.allocate() == a  # the free list hands the freed block out again


def test_allocator_errors():
    alloc = BlockAllocator(1)
    block = alloc.allocate()
    with pytest.raises(OutOfBlocksError, match="all 1 blocks are in use"):
        alloc.allocate()
    alloc.free(block)
    with pytest.raises(ValueError, match="block: expected an allocated block, got 0, which is free"):
        alloc.free(block)
    with pytest.raises(ValueError, match="block: expected an allocated block"):
        alloc.share(block)
    with pytest.raises(ValueError, match=r"block: expected an int in \[0, 0\], got 5"):
        alloc.free(5)
    with pytest.raises(ValueError, match="n_blocks: expected a positive int, got 0"):
        BlockAllocator(0)


# --- the paged cache against the contiguous one -------------------------------------------------


@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
@pytest.mark.parametrize("block_size", [4, 5, 16])
def test_paged_logits_equal_contiguous(n_kv_head, block_size, device):
    """Prefill of 11 positions, decode steps, a 3-token chunk, more decode steps: block sizes 4 and 5
    divide none or only some of the lengths, and 16 holds everything in one block."""
    model = random_gpt(n_kv_head).to(device)
    chunks = [x.to(device) for x in chunks_of(1, 3, [11, 1, 1, 3, 1, 1, 1])]
    reference = run_chunks(model, model.new_cache(3), chunks)
    cache = PagedKVCache(model.config, 3, n_blocks=20, block_size=block_size, device=device)
    paged = run_chunks(model, cache, chunks)
    torch.testing.assert_close(paged, reference, rtol=1e-5, atol=1e-5)
    assert cache.length == 19
    per_row = -(-19 // block_size)
    assert cache.allocator.n_used == 3 * per_row  # blocks on demand: ceil(19 / B) per row
    assert cache.stored_bytes() == 3 * per_row * cache.bytes_per_block


def test_stored_and_waste_bytes_by_hand():
    model = random_gpt()
    cache = PagedKVCache(model.config, 2, n_blocks=10, block_size=4)
    run_chunks(model, cache, chunks_of(2, 2, [6]))
    # one block: 2 (keys, values) x 2 layers x 4 heads x 4 positions x 4 dims x 4 bytes = 1024
    assert cache.bytes_per_block == 1024
    assert cache.stored_bytes() == 2 * 2 * 1024  # 6 positions: 2 blocks per row
    assert cache.waste_bytes() == 2 * 2 * 256  # 2 empty slots of 256 bytes in each row's last block
    assert cache.pool_bytes() == 10 * 1024
    cache.bytes_per_number = 2  # counted as a server keeps it, in 16-bit numbers
    assert cache.stored_bytes() == 2 * 2 * 512 and cache.waste_bytes() == 2 * 2 * 128


def test_fork_shares_then_copy_on_write_keeps_the_other_row():
    model = random_gpt()
    prompt, steps = chunks_of(3, 1, [6])[0], chunks_of(4, 2, [1, 1, 1])
    cache = PagedKVCache(model.config, 1, n_blocks=10, block_size=4)
    run_chunks(model, cache, [prompt])
    assert cache.fork(0) == 1 and cache.batch_size == 2
    assert cache.block_table(1) == cache.block_table(0) and cache.allocator.n_used == 2
    assert all(cache.allocator.refcount(b) == 2 for b in cache.block_table(0))
    before = cache.k_pool[:, cache.block_table(0)].clone()  # (L, 2, H, B, D): the prompt's keys
    logits = run_chunks(model, cache, steps)  # the rows diverge: position 6 is in the shared block 1
    # row 0 wrote first, so it copied block 1; row 1, the last holder, wrote in place
    assert cache.block_table(0)[0] == cache.block_table(1)[0]
    assert cache.block_table(0)[1] != cache.block_table(1)[1]
    assert cache.allocator.refcount(cache.block_table(0)[0]) == 2
    assert cache.allocator.n_used == 2 + 1 + 2  # shared block 0, block 1 and its copy, one new block each
    torch.testing.assert_close(cache.k_pool[:, cache.block_table(0)[0]], before[:, 0])
    b0, b1 = cache.block_table(0)[1], cache.block_table(1)[1]
    # the first two slots of block 1 (positions 4, 5: the prompt) are the same in both copies
    torch.testing.assert_close(cache.k_pool[:, b0, :, :2], before[:, 1, :, :2])
    torch.testing.assert_close(cache.k_pool[:, b1, :, :2], before[:, 1, :, :2])
    assert not torch.equal(cache.k_pool[:, b0, :, 2], cache.k_pool[:, b1, :, 2])  # different tokens
    # and the logits are those of a contiguous cache that prefilled the prompt in both rows
    reference = run_chunks(model, model.new_cache(2), [prompt.expand(2, -1)] + steps)[:, 6:]
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_sharing_saves_the_expected_blocks():
    """n = 4 samples of a 21-token prompt, blocks of 8: 3 blocks shared; after one step each sample owns
    a copy of the partial block 2 (three copies and the original), the 2 full blocks stay shared."""
    model = random_gpt()
    cache = PagedKVCache(model.config, 1, n_blocks=20, block_size=8)
    run_chunks(model, cache, chunks_of(5, 1, [21]))
    for _ in range(3):
        cache.fork(0)
    assert cache.allocator.n_used == 3
    run_chunks(model, cache, chunks_of(6, 4, [1]))
    assert cache.allocator.n_used == 2 + 4
    assert cache.stored_bytes() == 6 * cache.bytes_per_block  # unshared: 4 x 3 = 12 blocks
    assert parallel_sampling_blocks(21, [1] * 4, 8)["trace"][1] == 6  # the model-free count agrees


def test_fork_onto_an_existing_row_releases_its_blocks():
    model = random_gpt()
    cache = PagedKVCache(model.config, 2, n_blocks=10, block_size=4)
    run_chunks(model, cache, chunks_of(7, 2, [5]))
    assert cache.allocator.n_used == 4
    cache.fork(0, 1)
    assert cache.allocator.n_used == 2 and cache.block_table(1) == cache.block_table(0)
    cache.remove_row(1)
    assert cache.batch_size == 1 and all(cache.allocator.refcount(b) == 1 for b in cache.block_table(0))


def test_crop_frees_blocks_and_decoding_goes_on_as_contiguous():
    """Speculative decoding rolls back with crop: after it, the paged cache still matches the contiguous one."""
    model = random_gpt(n_kv_head=2)
    first, second = chunks_of(8, 2, [13]), chunks_of(9, 2, [3, 1])
    paged = PagedKVCache(model.config, 2, n_blocks=12, block_size=4)
    contiguous = model.new_cache(2)
    run_chunks(model, paged, first)
    run_chunks(model, contiguous, first)
    assert paged.allocator.n_used == 2 * 4
    paged.crop(7)
    contiguous.crop(7)
    assert paged.allocator.n_used == 2 * 2 and all(len(paged.block_table(r)) == 2 for r in range(2))
    torch.testing.assert_close(run_chunks(model, paged, second), run_chunks(model, contiguous, second),
                               rtol=1e-5, atol=1e-5)
    paged.crop(0)
    assert paged.allocator.n_used == 0 and paged.stored_bytes() == 0


def test_crop_keeps_blocks_other_rows_share():
    model = random_gpt()
    cache = PagedKVCache(model.config, 1, n_blocks=10, block_size=4)
    run_chunks(model, cache, chunks_of(10, 1, [9]))
    cache.fork(0)
    cache.crop(4)
    assert cache.allocator.n_used == 1 and cache.allocator.refcount(cache.block_table(0)[0]) == 2


def test_out_of_blocks_leaves_the_cache_unchanged():
    model = random_gpt()
    cache = PagedKVCache(model.config, 2, n_blocks=3, block_size=4)
    run_chunks(model, cache, chunks_of(11, 2, [4]))  # 2 blocks in use, 1 free
    with pytest.raises(OutOfBlocksError, match="needs 2 blocks, 1 of 3 are free"):
        run_chunks(model, cache, chunks_of(12, 2, [1]))
    assert cache.length == 4 and cache.allocator.n_used == 2
    assert all(len(cache.block_table(r)) == 1 for r in range(2))


def test_cache_bad_arguments():
    config = random_gpt().config
    with pytest.raises(TypeError, match="config: expected GPTConfig"):
        PagedKVCache("config", 1, 4)
    with pytest.raises(ValueError, match="n_blocks: expected a positive int, got 0"):
        PagedKVCache(config, 1, 0)
    with pytest.raises(ValueError, match="block_size: expected a positive int, got 0"):
        PagedKVCache(config, 1, 4, block_size=0)
    cache = PagedKVCache(config, 2, 4)
    with pytest.raises(ValueError, match=r"src_row: expected an int in \[0, 1\], got 2"):
        cache.fork(2)
    with pytest.raises(ValueError, match="dst_row: expected a row other than src_row=0"):
        cache.fork(0, 0)
    with pytest.raises(ValueError, match=r"length: expected an int in \[0, 0\], got 3"):
        cache.crop(3)
    cache.remove_row(0)
    with pytest.raises(ValueError, match="cannot remove the only row"):
        cache.remove_row(0)


# --- the serving simulator ------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len", [1, 6, 15, 16, 17, 40])
def test_paged_internal_fragmentation_of_one_request(prompt_len):
    """One request generating one token holds prompt + 1 slots in ceil((prompt + 1) / B) blocks: the last
    block wastes B - (prompt + 1) % B slots when B does not divide prompt + 1, none when it does."""
    stats = simulate_serving([Request(0, prompt_len, 1)], 64, "paged", block_size=16)
    length = prompt_len + 1
    waste = 16 - length % 16 if length % 16 else 0
    assert stats["steps"] == 1
    assert stats["memory"] == {"used": length, "internal": waste, "reserved": 0, "external": 0,
                               "free": 64 - length - waste}


def test_contiguous_reserves_exactly_the_maximum():
    """A request of 5 + 3 tokens under Orca (Max) with a context of 32: 32 slots held for 3 steps; it
    fills 6, 7, 8 of them, so 24 are never used and 2, 1, 0 are reserved for tokens still to come."""
    stats = simulate_serving([Request(0, 5, 3)], 64, "contiguous", max_len=32, reserve="max")
    assert stats["steps"] == 3 and stats["throughput"] == 1
    assert stats["memory"] == {"used": 7, "internal": 24, "reserved": 1, "external": 0, "free": 32}
    assert reservation(Request(0, 5, 3), "pow2", 32) == 8 and reservation(Request(0, 5, 12), "pow2", 32) == 32
    assert reservation(Request(0, 5, 3), "oracle", 32) == 8


def test_head_of_line_waits_for_a_reservation():
    """Three requests of 4 + 2 tokens at step 0, 64 slots, context 32: contiguous admits two (2 x 32), the
    third waits until they finish after step 1; paged (blocks of 4) admits all three."""
    requests = [Request(0, 4, 2)] * 3
    contiguous = simulate_serving(requests, 64, "contiguous", block_size=4, max_len=32)
    paged = simulate_serving(requests, 64, "paged", block_size=4, max_len=32)
    assert contiguous["batch_trace"] == [2, 2, 1, 1] and contiguous["mean_wait"] == pytest.approx(2 / 3)
    assert contiguous["throughput"] == 6 / 4 and contiguous["mean_batch"] == 6 / 4
    assert paged["batch_trace"] == [3, 3] and paged["mean_wait"] == 0 and paged["throughput"] == 3


def test_external_fragmentation_of_first_fit():
    """Capacity 12, exact reservations of 4 at [0, 4), [4, 8), [8, 12); the first and last finish after
    step 0. At step 1 a request of 6 arrives: 8 slots are free, but in two holes of 4, so all 8 are
    external fragmentation until the middle one ends."""
    requests = [Request(0, 3, 1), Request(0, 2, 2), Request(0, 3, 1), Request(1, 5, 1)]
    stats = simulate_serving(requests, 12, "contiguous", max_len=12, reserve="oracle")
    assert stats["batch_trace"] == [3, 1, 1] and stats["mean_wait"] == 1 / 4
    # step 0: 4 + 3 + 4 used, 1 reserved; step 1: 4 used, 8 external; step 2: 6 used, 6 free
    assert stats["memory"] == pytest.approx({"used": 21 / 3, "internal": 0, "reserved": 1 / 3,
                                             "external": 8 / 3, "free": 6 / 3})
    paged = simulate_serving(requests, 12, "paged", block_size=2, max_len=12)
    assert paged["batch_trace"] == [3, 2] and paged["memory"]["external"] == 0


def test_paged_preempts_the_latest_and_recomputes_it():
    """Two requests of 1 + 5 tokens in 4 blocks of 2. At step 3 the first needs a third block: the second
    (admitted after it) is preempted, waits for the first to finish, and is recomputed from its prompt
    and its 3 tokens."""
    stats = simulate_serving([Request(0, 1, 5)] * 2, 8, "paged", block_size=2, max_len=8)
    assert stats["batch_trace"] == [2, 2, 2, 1, 1, 1, 1]
    assert stats["preemptions"] == 1 and stats["recomputed_tokens"] == 4
    assert stats["memory"]["used"] == pytest.approx((4 + 6 + 8 + 5 + 6 + 5 + 6) / 7)


@pytest.mark.parametrize("seed", range(5))
def test_paged_admits_at_least_as_many_as_contiguous(seed):
    """With every request present at step 0 and the context reserved (B divides it), each request takes
    at most as much memory at admission under paging, so paging admits at least as many; over the
    whole run, its batch is larger on average."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(1, 120, (40,), generator=g).tolist()
    outputs = torch.randint(1, 120, (40,), generator=g).tolist()
    requests = [Request(0, p, n) for p, n in zip(prompts, outputs)]
    for capacity in (512, 1024, 2048):
        contiguous = simulate_serving(requests, capacity, "contiguous")
        paged = simulate_serving(requests, capacity, "paged")
        assert contiguous["batch_trace"][0] == capacity // 256
        assert paged["batch_trace"][0] >= contiguous["batch_trace"][0]
        assert paged["mean_batch"] >= contiguous["mean_batch"]
        assert sum(paged["batch_trace"]) == sum(contiguous["batch_trace"]) == sum(outputs)


def test_simulator_bad_arguments():
    with pytest.raises(ValueError, match="policy: expected one of"):
        simulate_serving([Request(0, 1, 1)], 64, "lru")
    with pytest.raises(ValueError, match="reserve: expected one of"):
        simulate_serving([Request(0, 1, 1)], 64, "contiguous", reserve="all")
    with pytest.raises(ValueError, match="capacity_tokens: request 0 alone needs 256 slots, got 64"):
        simulate_serving([Request(0, 1, 1)], 64, "contiguous")
    with pytest.raises(ValueError, match="requests: request 0 needs 300 positions"):
        simulate_serving([Request(0, 200, 100)], 1024, "paged")
    with pytest.raises(ValueError, match="requests: expected a non-empty list of Request"):
        simulate_serving([], 64, "paged")
    with pytest.raises(ValueError, match="output_len: expected a positive int, got 0"):
        Request(0, 1, 0)


# --- workloads and parallel sampling ----------------------------------------------------------------


def test_speech_lengths_and_workload():
    text = ("ACT I.\n\nROMEO.\nHo.\n\n[Exit.]\n\nFIRST CITIZEN.\nSpeak, speak.\n\n"
            "verse without a speaker\n\nJULIET.\nAy.")
    assert speech_lengths(text) == [len("ROMEO.\nHo."), len("FIRST CITIZEN.\nSpeak, speak."), len("JULIET.\nAy.")]
    lengths = [10, 20, 300, 5, 7]  # consecutive pairs within 64: (10, 20), (5, 7)
    requests = make_workload(lengths, 500, rate=0.5, max_len=64, seed=3)
    assert requests == make_workload(lengths, 500, rate=0.5, max_len=64, seed=3)
    assert {(r.prompt_len, r.output_len) for r in requests} == {(10, 20), (5, 7)}
    arrivals = [r.arrival for r in requests]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0
    assert arrivals[-1] / 499 == pytest.approx(2.0, rel=0.15)  # mean gap 1 / rate
    with pytest.raises(ValueError, match="lengths: no two consecutive speeches fit in max_len=8"):
        make_workload(lengths, 5, 1.0, max_len=8)
    with pytest.raises(ValueError, match="rate: expected a number > 0, got 0"):
        make_workload(lengths, 5, 0)


@pytest.mark.parametrize("prompt_len", [16, 21])
def test_parallel_sampling_blocks_by_hand(prompt_len):
    """n samples of m tokens after a prompt of p, blocks of B: shared, the floor(p / B) full prompt blocks
    count once and each sample owns the rest of its ceil((p + m) / B) blocks (the partial prompt block,
    if any, copied on write); unshared, every sample holds all its blocks."""
    n, m, B = 4, 20, 8
    per_sample = -(-(prompt_len + m) // B)
    shared = parallel_sampling_blocks(prompt_len, [m] * n, B)
    unshared = parallel_sampling_blocks(prompt_len, [m] * n, B, share=False)
    assert shared["peak"] == prompt_len // B + n * (per_sample - prompt_len // B)
    assert unshared["peak"] == n * per_sample
    assert shared["trace"][0] == -(-prompt_len // B) and unshared["trace"][0] == n * -(-prompt_len // B)
    with pytest.raises(ValueError, match="output_lens: expected a non-empty list of positive ints"):
        parallel_sampling_blocks(5, [])
