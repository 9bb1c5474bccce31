"""``pgshard verify``: usage and setup errors exit 2 with a message saying what to do,
before any workload or fault (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgshard_operator import cli


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--kube", "--cluster", "c"], "not available yet on Kubernetes"),
        (["--dir", "D", "--cluster", "c"], "goes with --kube"),
        (["--dir", "D", "--faults", "kill,partition"], "--faults takes some of"),
        (["--dir", "D", "--sessions", "0"], "--sessions ≥ 1"),
        (["--dir", "D"], "holds no pgshard cluster"),
    ],
)
def test_mistakes_exit_2_and_say_why(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / "none") if a == "D" else a for a in argv]
    assert cli.main(["verify", *argv]) == 2
    assert words in capsys.readouterr().err
