def build(
    keys: list[bytes | None],
    values: list[bytes | None],
    timestamps: list[int],
    producer_id: int,
    producer_epoch: int,
    attributes: int,
) -> bytearray: ...
def lines(batches: list[bytes], from_offset: int) -> tuple[bytes, int, int, int, bool] | None: ...
def build_lines(
    blocks: list[bytes],
    counts: list[int],
    keys: list[bytes | None],
    timestamps: list[int],
    producer_id: int,
    producer_epoch: int,
    attributes: int,
) -> bytearray: ...
def line_end(block: bytes, n: int) -> int: ...
