def build(
    keys: list[bytes | None],
    values: list[bytes | None],
    timestamps: list[int],
    producer_id: int,
    producer_epoch: int,
    attributes: int,
) -> bytearray: ...
