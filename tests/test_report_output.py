"""Where the report is written: a bad ``--out`` is refused, nothing is left half-written,
and two builds into one ``--out`` at once leave one whole report (its README with its figures).

Faults are injected, not arranged with permissions (CI runs as root, for whom a read-only
folder is writable): a file in the way, ``os.rename`` / ``os.replace`` / ``os.access`` /
``tempfile.mkdtemp`` made to fail, renames slowed down so that two builds' swaps overlap.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")

from test_report import earlier_report, make_run, snapshot, write

from impls import report
from impls.report import build
from impls.report import runs as run_loading

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    return write(tmp_path / "run.json", make_run())


def _reads(monkeypatch) -> list[Path]:
    """Every input file the report parses from now on."""
    read: list[Path] = []
    real = run_loading.read_json

    def counting(path: Path):
        read.append(path)
        return real(path)

    monkeypatch.setattr(run_loading, "read_json", counting)
    return read


def _main_fails(capsys, *args: object) -> str:
    """``fmbench report ARGS`` exits 2 with one line on stderr, nothing on stdout; the line."""
    assert report.main([str(arg) for arg in args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("fmbench report: error: ")
    return line


def _no_staging_left(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


# ------------------------------------------------------------- a bad --out


def test_out_is_a_file(tmp_path: Path, run_file: Path, capsys, monkeypatch) -> None:
    """Refused before any input is read, the file left as it was."""
    out = write(tmp_path / "report.md", "not a folder\n")
    read = _reads(monkeypatch)
    line = _main_fails(capsys, run_file, "--out", out, "--previous", "none")
    assert f"{out}: " in line and "is a file" in line
    assert read == [], "the output folder is checked before any input is read"
    assert out.read_text() == "not a folder\n"
    _no_staging_left(tmp_path)
    with pytest.raises(report.ReportError, match="is a file"):
        report.build_report([run_file], out)


@pytest.mark.parametrize("depth", [1, 3])
def test_out_under_a_file(tmp_path: Path, run_file: Path, capsys, depth: int) -> None:
    blocker = write(tmp_path / "blocker", "a file where a folder should be\n")
    out = blocker.joinpath(*["sub"] * depth)
    line = _main_fails(capsys, run_file, "--out", out, "--previous", "none")
    assert f"{out}: " in line and f"{blocker} is a file" in line
    assert blocker.read_text() == "a file where a folder should be\n"
    _no_staging_left(tmp_path)
    with pytest.raises(report.ReportError, match="is a file"):
        report.build_report([run_file], out)


def test_out_that_cannot_be_written_is_refused_first(
    tmp_path: Path, run_file: Path, capsys, monkeypatch
) -> None:
    """A folder without write permission (os.access says so: root passes any chmod)."""
    out = earlier_report(tmp_path)
    before = snapshot(out)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: Path(path) != out and real_access(path, mode, **kw)
    )
    read = _reads(monkeypatch)
    line = _main_fails(capsys, run_file, "--out", out, "--previous", "none")
    assert f"{out}: " in line and "cannot be written" in line
    assert read == []
    assert snapshot(out) == before


def _failing(real, failing: str, times: int = 1):
    """``real`` (os.rename or os.replace), raising EACCES the first ``times`` times its
    target is named ``failing``."""
    left = [times]

    def call(source, target, *args, **kwargs):
        if Path(target).name == failing and left[0] > 0:
            left[0] -= 1
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real(source, target, *args, **kwargs)

    return call


@pytest.mark.parametrize(
    ("function", "failing"),
    [
        ("replace", "README.md"),
        ("rename", "figures"),
        ("rename", "old-figures"),
        ("rename", "results.csv"),
        ("rename", "old-results.csv"),
    ],
)
def test_a_failed_move_leaves_the_earlier_report(
    tmp_path: Path, run_file: Path, capsys, monkeypatch, function: str, failing: str
) -> None:
    """The move into OUT fails part-way (an unwritable folder, a full disk): the earlier
    README and figures are put back as they were, status 2, one line naming OUT."""
    out = earlier_report(tmp_path)
    before = snapshot(out)
    monkeypatch.setattr(os, function, _failing(getattr(os, function), failing))
    line = _main_fails(capsys, run_file, "--out", out, "--previous", "none")
    assert f"{out}: " in line and "Permission denied" in line
    assert snapshot(out) == before, "the earlier report is left whole"
    _no_staging_left(tmp_path)


def test_earlier_figures_that_cannot_be_put_back_are_kept(
    tmp_path: Path, run_file: Path, capsys, monkeypatch
) -> None:
    """Every rename onto OUT/figures fails, the one that would put the earlier figures back
    too: they are kept in the staging folder, which the message names."""
    out = earlier_report(tmp_path)
    monkeypatch.setattr(os, "rename", _failing(os.rename, "figures", times=2))
    line = _main_fails(capsys, run_file, "--out", out, "--previous", "none")
    assert f"{out}: " in line and "the earlier figures could not be put back" in line
    kept = Path(line.rsplit("they are in ", 1)[1])
    assert (kept / "epoch_time.png").read_bytes() == b"earlier figure"
    assert (out / "README.md").read_text() == "earlier report\n"


def test_no_room_for_the_staging_folder(
    tmp_path: Path, run_file: Path, capsys, monkeypatch
) -> None:
    out = earlier_report(tmp_path)
    before = snapshot(out)

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    line = _main_fails(capsys, run_file, "--out", out, "--previous", "none")
    assert f"{out}: " in line and "Permission denied" in line
    assert snapshot(out) == before


@pytest.mark.parametrize("module", ["pandas", "tabulate", "matplotlib"])
def test_a_missing_report_module_is_one_line(
    tmp_path: Path, run_file: Path, capsys, monkeypatch, module: str
) -> None:
    """pandas, tabulate or matplotlib missing (imported when the report is rendered): status
    2, one line naming the module and the install command, the earlier report left whole."""
    out = earlier_report(tmp_path)
    before = snapshot(out)
    monkeypatch.setitem(sys.modules, module, None)  # 'import module' now raises ImportError
    line = _main_fails(capsys, run_file, "--out", out, "--previous", "none")
    assert f"needs {module}," in line and "pip install 'fmbench[bench]'" in line
    assert snapshot(out) == before
    _no_staging_left(tmp_path)


def test_an_unexpected_error_while_rendering_leaves_out_as_it_was(
    tmp_path: Path, run_file: Path, monkeypatch
) -> None:
    """A bug in the rendering (not a :class:`ReportError`) is raised as it is, after a
    figure was drawn: nothing of it reaches OUT, and the staging folder is removed."""
    out = earlier_report(tmp_path)
    before = snapshot(out)

    def half_rendered(runs, figures: Path, previous=(), history=None):
        figures.mkdir()
        (figures / "epoch_time.png").write_bytes(b"half-drawn")
        raise RuntimeError("a bug while rendering")

    monkeypatch.setattr(build, "render", half_rendered)
    with pytest.raises(RuntimeError, match="a bug while rendering"):
        report.main([str(run_file), "--out", str(out), "--previous", "none"])
    assert snapshot(out) == before
    _no_staging_left(tmp_path)


# --------------------------------------------------- two builds at once


def _slowed(real, seconds: float):
    def call(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    return call


def test_concurrent_builds_leave_one_whole_report(tmp_path: Path, monkeypatch) -> None:
    """Two builds of different runs into one OUT, started together, many times over, with
    slow renames so their moves overlap: neither fails, and after each round OUT holds one
    build's README with exactly that build's figures (rendering stubbed out: fast, and
    each figure names the build that drew it)."""
    runs = [report.load_run(write(tmp_path / f"{n}.json", make_run(n))) for n in ("a", "b")]
    drawn = {"a": ["epoch_time.png", "accuracy.png"], "b": ["epoch_time.png", "other.png"]}
    serial = itertools.count()

    def render(current, figures: Path, previous, history) -> str:
        name = current[0].path.stem  # the input: a or b
        text = f"report of {name} #{next(serial)}\n"
        figures.mkdir(parents=True)
        for figure in drawn[name]:
            (figures / figure).write_text(text)
        return text

    monkeypatch.setattr(build, "render", render)
    monkeypatch.setattr(os, "rename", _slowed(os.rename, 0.002))
    monkeypatch.setattr(os, "replace", _slowed(os.replace, 0.002))
    out = earlier_report(tmp_path)
    for _ in range(40):
        start, errors = threading.Barrier(2), []

        def one_build(run, start=start, errors=errors) -> None:
            start.wait()
            try:
                report.build_report([run], out)
            except Exception as error:  # any failure fails the test, below
                errors.append(repr(error))

        threads = [threading.Thread(target=one_build, args=(run,)) for run in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        text = (out / "README.md").read_text()
        figures = {p.name: p.read_text() for p in (out / "figures").iterdir()}
        assert figures == dict.fromkeys(drawn[text.split()[2]], text), "one build's README, figures"
    _no_staging_left(tmp_path)


WORKER = """
import contextlib, os, sys, time

def slowed(real):
    def call(*args, **kwargs):
        time.sleep(DELAY)
        return real(*args, **kwargs)
    return call

DELAY = float(sys.argv[1])
os.rename, os.replace = slowed(os.rename), slowed(os.replace)
from impls.report import main

for _ in sys.stdin:  # one build per line
    try:
        with contextlib.redirect_stdout(sys.stderr):
            status = main(sys.argv[2:])
    except BaseException as error:
        status = f"crashed: {error!r}".replace(chr(10), " ")
    print(f"built {status}", flush=True)
"""


def _report_of(out: Path) -> tuple[str, dict[str, bytes]]:
    """OUT's README (without its generation time) and figures."""
    text = (out / "README.md").read_text()
    text = "\n".join(line for line in text.splitlines() if "Report generated" not in line)
    return text, {p.name: p.read_bytes() for p in (out / "figures").iterdir()}


def test_two_report_commands_at_once(tmp_path: Path) -> None:
    """``fmbench report`` run twice at once on different runs, into one --out, a few times
    (real rendering, slow renames): each round both succeed, and OUT holds the README and
    the figures one of them builds alone."""
    script = write(tmp_path / "worker.py", WORKER)
    out = tmp_path / "out"
    faster = make_run("box-b", numpy_median=0.25)
    inputs = [write(tmp_path / "a.json", make_run("box-a")), write(tmp_path / "b.json", faster)]
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    command = [sys.executable, str(script), "0.05"]  # seconds added to every rename
    workers = []
    with contextlib.ExitStack() as files:
        for path, log in zip(inputs, logs, strict=True):
            worker = subprocess.Popen(
                [*command, str(path), "--out", str(out), "--previous", "none"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=files.enter_context(log.open("w")),
                text=True,
                cwd=REPO,
            )
            workers.append(worker)

    def round_of(chosen) -> list[str]:
        for worker in chosen:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        return [worker.stdout.readline().strip() for worker in chosen]

    try:
        alone = []
        for worker in workers:  # what each builds alone
            assert round_of([worker]) == ["built 0"]
            alone.append(_report_of(out))
        assert alone[0][0] != alone[1][0] and alone[0][1] != alone[1][1]
        for _ in range(4):
            assert round_of(workers) == ["built 0", "built 0"]
            assert _report_of(out) in alone, "README and figures of one build"
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(timeout=60)
            worker.stdout.close()
    for log in logs:
        assert "Traceback" not in log.read_text()
    _no_staging_left(tmp_path)
