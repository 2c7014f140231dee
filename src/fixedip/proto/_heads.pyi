"""Types of the C extension fixedip/proto/_heads.c (see fixedip.proto.http1)."""

from collections.abc import Sequence

def parse_request(
    data: bytes, pos: int, limit: int, /
) -> (
    tuple[str, bytes, str, list[tuple[bytes, bytes]], list[bytes], int | None, bool, int] | None
): ...
def parse_response(
    data: bytes, pos: int, limit: int, /
) -> (
    tuple[int, bytes, str, list[tuple[bytes, bytes]], list[bytes], int | None, bool, int] | None
): ...
def forward_head(
    first_line: bytes,
    headers: list[tuple[bytes, bytes]],
    lnames: list[bytes],
    drop: frozenset[bytes],
    keep: frozenset[bytes] | None,
    before: Sequence[tuple[bytes, bytes]],
    after: Sequence[tuple[bytes, bytes]],
    body: bytes,
    /,
) -> bytes: ...
def remembered() -> tuple[list[bytes], list[bytes]]: ...
