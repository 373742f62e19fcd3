from typing import Any

def scan(
    buffer: bytes, pos: int, codecs: Any, outputs: Any, xid: int, commit_ms: int, now_ms: int
) -> tuple[int, int, bytes | None]: ...
