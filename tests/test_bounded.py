from __future__ import annotations

from fixedip.bounded import remember


def test_a_memo_never_holds_more_than_its_limit_and_keeps_the_newest_entry() -> None:
    table: dict[int, str] = {}
    for key in range(10):
        assert remember(table, key, f"v{key}", limit=4) == f"v{key}"
        assert len(table) <= 4
        assert table[key] == f"v{key}"
    assert table == {8: "v8", 9: "v9"}  # emptied when full at 8, then 9 added
