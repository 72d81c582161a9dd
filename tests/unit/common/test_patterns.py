"""Operator- and user-supplied regular expressions run on RE2: linear time on hostile input, clear refusals."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dragonfly.common.patterns import MAX_PATTERN_LENGTH, cached_pattern, compile_pattern

#: Exponential for a backtracking engine (Python's re) on a run of "a" that does not end the text.
EVIL = r"(a+)+$"
HOSTILE = "a" * 64 + "!"


def test_every_matching_site_meets_a_pathological_pattern_and_hostile_input_at_once() -> None:
    # In a child process with a bound: Python's re would need ~2^64 steps here, holding the GIL in C where no
    # signal or timer thread can stop it, so a regression must cost a killed child, not a hung test run.
    script = textwrap.dedent(
        f"""
        from dragonfly.common.patterns import compile_pattern
        from dragonfly.daemon.config import load_dfdaemon_config
        from dragonfly.daemon.proxy.routing import route
        from dragonfly.manager.searcher import score
        from dragonfly.scheduler.config import BlockRule

        evil, hostile = {EVIL!r}, {HOSTILE!r}
        assert compile_pattern(evil).search(hostile) is None
        assert compile_pattern(evil).search("a" * 1_000_000) is not None
        # The proxy's rules against a request URL.
        proxy = load_dfdaemon_config(None, overrides={{"proxy": {{"rules": [{{"regex": evil}}]}}}}).proxy
        assert not route("GET", "http://registry.example/" + hostile, {{}}, proxy).p2p
        # The scheduler's block list against a task URL.
        assert not BlockRule(urls=[evil]).matches("http://origin.example/" + hostile, "", "")
        # A cluster scope's host names against the host name a daemon reports.
        assert score({{"hostnames": [evil]}}, False, ip="", hostname=hostile, idc="", location="") == 0
        print("done")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "invalid escape sequence: \\1"),
        (r"foo(?=bar)", "invalid perl operator: (?="),
        ("(", "missing ): ("),
    ],
)
def test_what_re2_refuses_is_a_clear_error(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match="is not a regular expression RE2 accepts") as caught:
        compile_pattern(pattern)
    message = str(caught.value)
    assert message.startswith(f"{pattern!r} is not a regular expression RE2 accepts ({reason})")
    assert "no backreferences or lookaround" in message


def test_a_huge_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match=f"longer than {MAX_PATTERN_LENGTH} characters"):
        compile_pattern("a" * (MAX_PATTERN_LENGTH + 1))


def test_dragonfly_style_patterns_keep_their_meaning() -> None:
    assert compile_pattern(r"blobs/sha256.*").search("https://r.example/v2/a/blobs/sha256:" + "ab" * 32)
    assert compile_pattern(r"^node-\d+$").search("node-12")
    assert not compile_pattern(r"^node-\d+$").search("node-12x")
    assert cached_pattern(r"^node-\d+$") is cached_pattern(r"^node-\d+$")
