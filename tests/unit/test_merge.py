"""The block-level merge rebuilds a table exactly: random histories (a base, one to three
deltas updating, deleting, re-inserting and appending keys, the newest key set as ranges or as
a key list), streams cut anywhere (mid-line, one byte at a time, whole), keys in any column,
compared with the state the same changes give applied one by one."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from managed_backups.shared.dataplane.merge import (
    CorruptStream,
    Key,
    KeyList,
    RangeSet,
    merge_history,
)
from managed_backups.shared.dataplane.sql import unescape_copy


def cut(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """``data`` in blocks of random sizes (some tiny, some larger than a line)."""
    i = 0
    while i < len(data):
        size = rng.choice([1, 2, 7, 30, 200, 5000, 1 << 20])
        yield data[i : i + size]
        i += size


def ranges(keys: list[int]) -> bytes:
    out = []
    start = prev = None
    for k in keys:
        if start is None:
            start = prev = k
        elif k == prev + 1:  # type: ignore[operator]
            prev = k
        else:
            out.append(f"{start}\t{prev}\n")
            start = prev = k
    if start is not None:
        out.append(f"{start}\t{prev}\n")
    return "".join(out).encode()


def rows(state: dict[int, str], keys: list[int], text_key: bool) -> bytes:
    if text_key:  # the key second, as text with an escape: ordered by its bytes
        return b"".join(f"{state[k]}\tk{k:08d}\\t\n".encode() for k in keys)
    return b"".join(f"{k}\t{state[k]}\n".encode() for k in keys)


def history(
    rng: random.Random, size: int
) -> tuple[dict[int, str], list[dict[int, str]], dict[int, str]]:
    base = {k: f"v{k}" for k in rng.sample(range(size * 3), size)}
    state = dict(base)
    deltas = []
    for step in range(rng.randint(1, 3)):
        changed: dict[int, str] = {}
        for k in rng.sample(sorted(state), min(len(state), rng.randint(0, size // 5 + 1))):
            if rng.random() < 0.5:
                del state[k]
            else:
                state[k] = changed[k] = f"u{step}-{k}"
        for k in rng.sample(range(size * 3 + 50), rng.randint(0, size // 5 + 1)):
            if k not in state:
                state[k] = changed[k] = f"i{step}-{k}"
        deltas.append(changed)
    return base, deltas, state


@pytest.mark.parametrize("seed", range(120))
def test_a_random_history_merges_to_its_state(seed: int) -> None:
    rng = random.Random(seed)
    text_key = seed % 3 == 0
    base, deltas, state = history(rng, rng.choice([1, 5, 40, 400]))

    def key(line: bytes) -> Key:
        fields = line.split(b"\t")
        return (unescape_copy(fields[1]),) if text_key else (int(fields[0]),)

    def order(keys: dict[int, str]) -> list[int]:
        return sorted(keys, key=lambda k: f"k{k:08d}\t".encode()) if text_key else sorted(keys)

    live_keys = order(state)
    if text_key or seed % 2:
        live: KeyList | RangeSet = KeyList(
            iter([(f"k{k:08d}\t".encode(),) if text_key else (k,) for k in live_keys])
        )
    else:
        live = RangeSet(iter(ranges(live_keys).splitlines()))
    merged = merge_history(
        cut(rows(base, order(base), text_key), rng),
        [cut(rows(d, order(d), text_key), rng) for d in deltas],
        live,
        key,
    )
    assert b"".join(merged) == rows(state, live_keys, text_key)


def test_an_unchanged_block_passes_through_as_it_is() -> None:
    base = b"".join(f"{k}\tv\n".encode() for k in range(1000))
    blocks = list(
        merge_history(
            [base], [b""], RangeSet(iter([b"0\t999"])), lambda line: (int(line.split(b"\t")[0]),)
        )
    )
    assert blocks == [base] and blocks[0] is base


def test_a_stream_cut_mid_line_is_refused() -> None:
    with pytest.raises(CorruptStream):
        list(
            merge_history(
                [b"1\ta\n2\tb"], [], RangeSet(iter([b"1\t2"])), lambda line: (int(line[:1]),)
            )
        )
