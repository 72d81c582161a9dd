import logging
import subprocess
import sys
import textwrap

import pytest

from dragonfly.common import process


def test_announce_lines_have_the_launcher_format(capsys):
    process.announce_listening("scheduler", "127.0.0.1:8002")
    process.announce_ready("scheduler")
    assert capsys.readouterr().out == ("dragonfly: scheduler listening on 127.0.0.1:8002\ndragonfly: scheduler ready\n")


def test_setup_logging_renders_extra_fields(capsys):
    process.setup_logging("debug", component="scheduler")
    try:
        logging.getLogger("t").info("piece finished", extra={"task_id": "abc", "piece": 3})
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    assert "INFO scheduler t: piece finished" in err
    assert err.rstrip().endswith("task_id=abc piece=3")


def test_setup_logging_rejects_unknown_level():
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        process.setup_logging("loud", component="x")


def test_run_async_stops_gracefully_on_sigterm():
    script = textwrap.dedent(
        """
        import asyncio, os, signal
        from dragonfly.common.process import run_async

        async def main():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(30)
                return 3
            finally:
                print("cleaned up", flush=True)

        raise SystemExit(run_async(main))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cleaned up\n"
