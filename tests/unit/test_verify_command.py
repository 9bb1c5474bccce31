"""``pgshard verify``: usage and setup errors exit 2 with a message saying what to do,
before any workload or fault (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgshard_operator import cli


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--kube"], "--kube needs --cluster NAME"),
        (["--kube", "--cluster", "c", "--faults", "kill,stop"], "stop is not available with"),
        (
            ["--kube", "--cluster", "c", "--faults", "kill,crash"],
            "some of kill, switchover, partition",
        ),
        (["--dir", "D", "--cluster", "c"], "go with --kube"),
        (["--dir", "D", "--proxy-address", "h:1"], "go with --kube"),
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


def test_kube_without_a_kubeconfig_exits_2_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["verify", "--kube", "--cluster", "c", "--fault-count", "0"]) == 2
    assert "set KUBECONFIG" in capsys.readouterr().err
