"""The ``fmbench`` command line: exit codes, messages, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from impls import registry
from impls.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "tensorflow"], "known implementations: numpy"),
        (["train", "numpy", "--epochs", "0"], "--epochs: must be positive"),
        (["train", "numpy", "--lr", "-0.1"], "--lr: must be positive"),
        (["train", "numpy", "--lr", "abc"], "not a number"),
        (["train", "numpy", "--batch-size", "0"], "--batch-size: must be positive"),
        (["train", "numpy", "--data-dir", "/no/such/dir"], "not a readable directory"),
        (["train", "numpy", "--device", "quantum"], "quantum"),
        (["bogus"], "invalid choice"),
        ([], "required"),
    ],
    ids=[
        "unknown-impl",
        "epochs-0",
        "negative-lr",
        "lr-text",
        "batch-0",
        "bad-data-dir",
        "bad-device",
        "bad-command",
        "no-command",
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, real_data):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_train_numpy_prints_epochs_and_writes_figures(tmp_path, capsys, real_data):
    out = tmp_path / "run"
    assert (
        main(["train", "numpy", "--epochs", "2", "--threads", "2", "--out", str(out), "--quiet"])
        == 0
    )
    stdout = capsys.readouterr().out
    assert stdout.count("  test acc ") == 2
    assert "final test accuracy 0.8" in stdout
    for name in ("curves.png", "predictions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert len(history["records"]) == 2 and history["config"]["threads"] == 2


def test_divergence_exits_1_with_clear_message(tmp_path, capsys, real_data):
    assert (
        main(["train", "numpy", "--lr", "1e6", "--epochs", "2", "--out", str(tmp_path), "--quiet"])
        == 1
    )
    assert "diverged at epoch 1" in capsys.readouterr().err


def test_list_shows_every_implementation(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in registry.REGISTRY:
        assert name in out


def test_list_survives_a_missing_framework(monkeypatch, capsys):
    fake = registry.Implementation("fake", "impls.fake", ("no_such_framework_xyz",), "fake", "x")
    monkeypatch.setitem(registry.REGISTRY, "fake", fake)
    assert main(["list"]) == 0
    assert "missing no_such_framework_xyz (pip install 'fmbench[fake]')" in capsys.readouterr().out


def test_data_reports_four_verified_files(capsys, real_data):
    assert main(["data", "--no-download"]) == 0
    out = capsys.readouterr().out
    assert out.count("verified sha256") == 4 and "4 files verified" in out


def test_console_script_runs_as_a_process(real_data):
    result = subprocess.run(
        [sys.executable, "-m", "impls.cli", "train", "numpy", "--epochs", "-3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_report_subcommand_passes_its_arguments_through(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["report", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    assert "--previous" in capsys.readouterr().out


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
def test_output_piped_into_a_closed_reader_is_not_an_error(unbuffered):
    # "fmbench list | head -1": head exits early and the pipe breaks under fmbench.
    result = subprocess.run(
        f"'{sys.executable}' -m impls.cli list | head -1",
        shell=True, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONUNBUFFERED": unbuffered},
    )  # fmt: skip
    assert result.stdout.startswith("numpy")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
