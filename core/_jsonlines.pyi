from collections.abc import Callable

def mask_lines(
    block: bytes,
    fields: tuple[bytes, ...],
    cache: dict[bytes, bytes],
    replace: Callable[[bytes], bytes],
    fallback: Callable[[bytes], bytes | None],
) -> bytes | None: ...
def count_lines(block: bytes) -> int: ...
