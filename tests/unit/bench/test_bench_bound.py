import pytest

from bench.swarm.bound import efficiency, kumar_ross_bound
from bench.swarm.units import format_rate, format_size, parse_rate, parse_size

GIB = 1 << 30


def test_headline_configuration_is_origin_bound() -> None:
    # 8 peers × 1 GiB, origin 400 Mbit/s, peers 800 Mbit/s: the origin link binds at F/u_s.
    bound = kumar_ross_bound(GIB, 50e6, [100e6] * 8, [100e6] * 8)
    assert bound.origin_term == pytest.approx(GIB / 50e6)
    assert bound.download_term == pytest.approx(GIB / 100e6)
    assert bound.swarm_term == pytest.approx(8 * GIB / (50e6 + 800e6))
    assert bound.seconds == pytest.approx(21.474836, rel=1e-6)
    assert bound.binding == "F/u_s"


def test_swarm_term_binds_when_peers_upload_slowly() -> None:
    bound = kumar_ross_bound(1000, 1000.0, [10.0] * 100, [1000.0] * 100)
    assert bound.swarm_term == pytest.approx(100 * 1000 / 2000)
    assert bound.seconds == 50.0
    assert bound.binding == "N·F/(u_s+Σu_i)"


def test_slowest_download_binds() -> None:
    bound = kumar_ross_bound(1000, 1e6, [1e6, 1e6], [1e6, 10.0])
    assert bound.seconds == 100.0
    assert bound.binding == "F/d_min"


def test_zero_rate_means_unlimited() -> None:
    bound = kumar_ross_bound(1000, 0, [0, 0], [100.0, 0])
    assert bound.origin_term == 0
    assert bound.swarm_term == 0
    assert bound.seconds == 10.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1.0, [1.0], [1.0]), "size must be positive"),
        ((1, 1.0, [], []), "need one upload and one download rate per peer"),
        ((1, 1.0, [1.0], [1.0, 1.0]), "need one upload and one download rate per peer"),
        ((1, -1.0, [1.0], [1.0]), "rates must not be negative"),
    ],
)
def test_bad_bound_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kumar_ross_bound(*args)


def test_efficiency() -> None:
    assert efficiency(21.5, 25.0) == pytest.approx(0.86)
    with pytest.raises(ValueError, match="makespan must be positive"):
        efficiency(1.0, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1GiB", GIB), ("256MiB", 256 << 20), ("100MB", 100_000_000), ("4096", 4096), ("1.5KiB", 1536), (7, 7)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("400Mbit", 50e6), ("1Gbit", 125e6), ("800mbit", 100e6), ("50MiB/s", 50 * 2**20), ("0", 0.0), (12.5, 12.5)],
)
def test_parse_rate(text: str, expected: float) -> None:
    assert parse_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "1GiBs", "fast", "-1MiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["400", "400MB", "x Mbit"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate(text)


def test_formatting() -> None:
    assert format_size(GIB) == "1.00 GiB"
    assert format_size(1536) == "1.50 KiB"
    assert format_size(12) == "12 B"
    assert format_rate(50e6) == "400 Mbit/s"
