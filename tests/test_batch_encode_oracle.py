"""encode_batch's record area checked against a dumb oracle written from the byte table of
docs/batch-format.md (the keyless, headerless fast path included). Seeded; prints its seed."""

from __future__ import annotations

import random
import struct

from tidelog.proto import batch as codec


def oracle_record(delta: int, ts_delta: int, key: bytes | None, value: bytes | None,
                  headers: tuple[tuple[str, bytes | None], ...]) -> bytes:
    def sized(data: bytes | None) -> bytes:
        return struct.pack(">i", -1) if data is None else struct.pack(">i", len(data)) + data

    rest = (struct.pack(">b", 0) + struct.pack(">i", delta) + struct.pack(">i", ts_delta)
            + sized(key) + sized(value) + struct.pack(">H", len(headers))
            + b"".join(struct.pack(">H", len(n.encode())) + n.encode() + sized(v)
                       for n, v in headers))
    return struct.pack(">i", len(rest)) + rest


def test_encoded_records_match_the_byte_table_oracle() -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}: replay with random.Random({seed})")
    rng = random.Random(seed)
    for _ in range(200):
        records = [(None if rng.random() < 0.5 else rng.randbytes(rng.randrange(6)),
                    None if rng.random() < 0.1 else rng.randbytes(rng.randrange(60)),
                    () if rng.random() < 0.7 else (("h", b"x"), ("k", None)),
                    1_700_000_000_000 + rng.randrange(1000))
                   for _ in range(rng.randrange(1, 30))]
        encoded = codec.encode_batch(records, codec=codec.Codec.NONE)
        first = records[0][3]
        expected = b"".join(oracle_record(i, ts - first, k, v, h)
                            for i, (k, v, h, ts) in enumerate(records))
        assert encoded[codec.HEADER_SIZE:] == expected
