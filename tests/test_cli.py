"""Command line: help texts, the data command, one-line errors with exit status 2."""
from __future__ import annotations

import subprocess
import sys

import pytest

from detector.cli import main


def test_rcnn_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "config", "train"):
        assert command in out
    assert "example" in out


def test_data_command_on_tiny_set(tiny_voc, capsys):
    assert main(["data", "--config", "tiny", "--set", f"data.root={tiny_voc}", "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "8 images" in out and "square" in out and "disc" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "--config", "tiny", "--set", "data.root=/no/such/dir"], "/no/such/dir: dataset root not found"),
        (["data", "--config", "nope.yaml"], "config nope.yaml: no such file"),
        (["config", "--config", "tiny", "--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_python_dash_m_detector():
    result = subprocess.run([sys.executable, "-m", "detector", "config", "--config", "tiny"], capture_output=True, text=True)
    assert result.returncode == 0 and "name: tiny" in result.stdout
