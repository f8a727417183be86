"""The split-KV plan's contract, on the Python planner the GPU planner is tested against
(tests/gpu/test_decode.py::test_metadata_matches_reference): what the decode and combine
kernels and the workspace size rely on, and the part sizes docs/perf.md (v7, v16, v18) measured."""

import random

import pytest

from mla_backend.reference import (
    CUT_COST_PAGES,
    MAX_PLAN_UNITS,
    PAGE_SIZE,
    plan_charge,
    split_kv_plan,
)

ROWS = [0, 1, 16, 32, 33, 64, 65, 128, 512, 2048]


def random_batch(rng: random.Random) -> tuple[list[int], int]:
    batch = rng.choice([1, 2, 5, 8, 31, 32, 33, 64, 128, 500])
    uniform = rng.random() < 0.3
    length = rng.choice([1, 64, 1024, 4096, 16384])
    seqlens = [
        length if uniform else rng.choice([0, 1, 63, 64, 65, rng.randrange(1, 70000)])
        for _ in range(batch)
    ]
    return seqlens, rng.choice([1, 2, 3, 33, 66, 132, 1000])


@pytest.mark.parametrize("seed", range(60))
def test_plan_contract(seed):
    rng = random.Random(seed)
    seqlens, num_parts = random_batch(rng)
    rows = rng.choice(ROWS)
    parts, batches = split_kv_plan(seqlens, num_parts, rows)
    assert len(parts) == num_parts and len(batches) == len(seqlens)
    # Parts tile the units end to end, in order.
    assert parts[0][2] == 0
    for q in range(num_parts - 1):
        assert parts[q][3] == parts[q + 1][2]
    head, tail = plan_charge(len(seqlens), rows)
    assert head >= 1 and tail >= 0, "an empty sequence needs a unit before its end"
    total = sum(-(-max(n, 0) // PAGE_SIZE) + head + tail for n in seqlens)
    assert parts[-1][3] == total
    slots_used = 0
    for b, (page0, first, splits, slot) in enumerate(batches):
        touching = [q for q, part in enumerate(parts) if part[0] <= b < part[1]]
        assert touching == list(range(first, first + splits)), "a sequence's parts are contiguous"
        if splits > 1:
            assert slot == slots_used, "split sequences take consecutive workspace slots"
            slots_used += splits
        # The sequence's pages all lie in its parts' units.
        pages = -(-max(seqlens[b], 0) // PAGE_SIZE)
        if pages:
            assert parts[first][2] <= page0 < parts[first][3]
            assert parts[first + splits - 1][2] < page0 + pages <= parts[first + splits - 1][3]
    # decode_workspace allocates 2 * num_parts slots whatever the batch: a part holds at most
    # two split pieces (its first and last sequence).
    assert slots_used <= 2 * num_parts
    for b_begin, b_end, _, _ in parts:
        inner = [b for b in range(b_begin + 1, b_end - 1) if batches[b][2] > 1]
        assert not inner, "only a part's first and last sequence may be split"


@pytest.mark.parametrize(
    ("batch", "length", "num_parts", "units_per_part", "split"),
    [
        (128, 4096, 132, 68, 0),  # 68 units each: one whole sequence per part, not two halves
        (128, 4096, 66, 136, 0),  # two whole sequences per part
        (128, 1024, 66, 40, 0),  # 20 units each: two per part instead of cuts at 39
        (128, 16384, 132, 253, 128),  # 260 units: cutting costs less than 7 more units per part
        (32, 4096, 132, 17, 32),  # batch * 4 < parts: equal parts, every sequence split
        (1, 4096, 132, 1, 1),  # one sequence: one page per part, 64 pieces
        (1, 32768, 66, 8, 1),  # 513 units: 8 per part, as with one page of fixed cost
    ],
)
def test_part_size(batch, length, num_parts, units_per_part, split):
    parts, batches = split_kv_plan([length] * batch, num_parts)
    assert parts[0][3] - parts[0][2] == units_per_part
    assert sum(b[2] > 1 for b in batches) == split


@pytest.mark.parametrize("seed", range(200))
def test_pricing_takes_the_smallest_part_size_that_cuts_nothing(seed):
    # The metadata kernel relies on this (csrc/smxx/metadata.cu, docs/perf.md v26): a boundary
    # cuts at most one sequence, so ceil(cuts / parts used) is 0 or 1 and the cheapest of
    # T0 .. T0 + 15 is the smallest of T0 .. T0 + CUT_COST_PAGES that cuts no sequence, else T0.
    rng = random.Random(seed)
    batch = rng.choice([33, 34, 40, 64, 100, 128, 300, 513])
    num_parts = rng.choice([2, 7, 66, 132, 4 * batch])
    rows = rng.choice(ROWS)
    if rng.random() < 0.5:
        seqlens = [rng.choice([64, 1024, 4096, 4000, 16384])] * batch
    else:
        seqlens = [rng.choice([0, 1, 64, 65, rng.randrange(1, 40000)]) for _ in range(batch)]
    parts, _ = split_kv_plan(seqlens, num_parts, rows)
    head, tail = plan_charge(batch, rows)
    ends, firsts, unit = [], [], 0
    for n in seqlens:
        pages = -(-max(n, 0) // PAGE_SIZE)
        unit += head + pages + tail
        ends.append(unit - tail)
        firsts.append(unit - tail - pages if pages else unit - tail - head)
    total = unit
    t0 = -(-total // num_parts)
    clean = [
        t
        for t in range(t0, t0 + CUT_COST_PAGES + 1)
        if all((e - 1) // t == f // t for e, f in zip(ends, firsts, strict=True))
    ]
    expected = clean[0] if clean else t0
    assert [p[2:] for p in parts] == [
        [min(q * expected, total), min((q + 1) * expected, total)] for q in range(num_parts)
    ]


def pieces(seqlens: list[int], num_parts: int, rows: int, b: int) -> list[int]:
    """Pages of sequence b in each of its parts."""
    parts, batches = split_kv_plan(seqlens, num_parts, rows)
    page0, first, splits, _ = batches[b]
    end = page0 - (-seqlens[b] // PAGE_SIZE)
    return [min(parts[q][3], end) - max(parts[q][2], page0) for q in range(first, first + splits)]


@pytest.mark.parametrize(
    ("rows", "num_parts", "expected"),
    [
        (0, 66, [6, 10]),  # the whole charge before the pages: a first piece of 6 (v17)
        (64, 66, [6, 10]),
        (128, 66, [8, 8]),  # 2 units before, 2 after: the boundary halves the sequence
        (512, 66, [8, 8]),
        (0, 132, [1, 5, 5, 5]),
        (16, 132, [3, 5, 5, 3]),  # 2 before, 1 after
        (128, 132, [3, 5, 5, 3]),
    ],
)
def test_charge_by_rows_moves_the_cuts(rows, num_parts, expected):
    # 32 sequences of 16 pages: where the charge sits decides how a cut sequence is shared out.
    assert pieces([1024] * 32, num_parts, rows, 0) == expected


def test_charge_by_rows():
    assert [plan_charge(2, r) for r in ROWS] == [
        (4, 0), (2, 1), (2, 1), (2, 1), (4, 0), (4, 0), (2, 2), (2, 2), (2, 2), (2, 2)
    ]  # fmt: skip
    assert {plan_charge(1, r) for r in ROWS} == {(1, 0)}
    assert plan_charge(0, 16) == (1, 0)


@pytest.mark.parametrize("rows", ROWS)
def test_one_sequence_keeps_its_pages_spread(rows):
    # A batch of one sequence takes one unit of fixed cost whatever its rows: every part holds a
    # piece of it, and a larger cost would raise the part size (docs/perf.md v16).
    parts, batches = split_kv_plan([4096], 66, rows)
    assert batches[0][:3] == [1, 1, 64]  # its first page is unit 1, in part 1; 64 pieces
    assert sum(p[3] > p[2] for p in parts) == 65
    # An empty sequence still has a part, which writes its empty rows.
    parts, batches = split_kv_plan([0], 132, rows)
    assert batches[0][2] == 1 and parts[0][:2] == [0, 1]


@pytest.mark.parametrize("rows", ROWS)
def test_empty_sequences_keep_a_part(rows):
    # With a tail after the pages, an empty sequence's part is the one of its head's last unit.
    seqlens = [0, 1024, 0, 0, 65, 0]
    parts, batches = split_kv_plan(seqlens, 7, rows)
    for b, (_, first, splits, _) in enumerate(batches):
        assert splits >= 1 and parts[first][0] <= b < parts[first][1]


def test_large_batches_take_equal_parts():
    # Above 4096 sequences the GPU plans through global memory, without the part-size search.
    for rows in (0, 16, 128):
        parts, _ = split_kv_plan([4096] * 5000, 4000, rows)
        assert parts[0][3] - parts[0][2] == -(-5000 * (64 + sum(plan_charge(5000, rows))) // 4000)


@pytest.mark.parametrize("rows", [0, 16, 128])
@pytest.mark.parametrize("batch", [1, 64, 100, 5000])
def test_garbage_lengths_keep_the_plan_in_int32(batch, rows):
    # Lengths near INT_MAX (2^25 pages each) would sum past int32 in the GPU planner's units:
    # the planned pages are capped so the total stays below MAX_PLAN_UNITS, and the plan still
    # tiles the units, keeps every slot inside the 2 * num_parts workspace, and marks every
    # sequence's first and last part.
    seqlens = [2**31 - 1] * batch + [700, 0, 65]
    num_parts = 132
    parts, batches = split_kv_plan(seqlens, num_parts, rows)
    total = parts[-1][3]
    assert total <= MAX_PLAN_UNITS and all(0 <= p[2] <= p[3] <= total for p in parts)
    slots = [slot + s for _, first, splits, slot in batches if splits > 1 for s in range(splits)]
    assert all(0 <= s < 2 * num_parts for s in slots)
    for b, (_, first, splits, _) in enumerate(batches):
        touching = [q for q, part in enumerate(parts) if part[0] <= b < part[1]]
        assert touching == list(range(first, first + splits)) and splits >= 1
    # Real lengths are not capped: the cap is 2^30 // batch - the charge pages per sequence.
    for rows in (0, 16, 128):
        total = split_kv_plan([2**20] * 100, 132, rows)[0][-1][3]
        assert total == 100 * (2**20 // PAGE_SIZE + sum(plan_charge(100, rows)))


def test_rejects_no_parts():
    with pytest.raises(ValueError, match="num_parts"):
        split_kv_plan([10], 0)
