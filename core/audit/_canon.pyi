from collections.abc import Sequence

#: (canonical, n, keys_size, values_size, link, first_offset_delta, last_offset_delta)
Piece = tuple[bytes, int, int, int, bytes | None, int, int]

def canonical_from_records(records: bytes | bytearray | memoryview, count: int, base_timestamp: int, append_time: bool) -> list[Piece]: ...
def canonical_from_columns(
    timestamps: Sequence[int],
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    headers: Sequence[Sequence[tuple[str, bytes | None]]] | None,
) -> bytes: ...
def digest_columns(
    prev: bytes,
    timestamps: Sequence[int],
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    headers: Sequence[Sequence[tuple[str, bytes | None]]] | None,
    last: tuple[int, bytes | None, bytes | None] | None = None,
) -> bytes: ...
def sha256_in_c() -> bool: ...
