import pytest

from pgshard_proxy.contract import positions


@pytest.mark.parametrize(
    "text,value",
    [("0/0", 0), ("0/3000060", 0x3000060), ("16/B374D848", (0x16 << 32) | 0xB374D848)],
)
def test_lsn_round_trip(text: str, value: int) -> None:
    assert positions.parse_lsn(text) == value
    assert positions.format_lsn(value) == text


@pytest.mark.parametrize("bad", ["", "12", "x/1", "1/", "/1", "100000000/0"])
def test_bad_lsn(bad: str) -> None:
    with pytest.raises(positions.BadPosition):
        positions.parse_lsn(bad)


def test_parse_accepts_ints_and_none() -> None:
    assert positions.parse(None) is None
    assert positions.parse(42) == 42
    with pytest.raises(positions.BadPosition):
        positions.parse(-1)
    with pytest.raises(positions.BadPosition):
        positions.parse(True)
