"""The report refuses a bad input in one line naming the file and the field, and writes nothing.

Every field the report reads is checked on loading, with the result format's definitions:
each case with :mod:`impls.results`, the run-level sections (``machine_info``, ``commit_info``
and the ``fmbench`` section: settings, tests, sample images) with :mod:`impls.run_info`.
The documents are the valid synthetic runs of ``test_report`` with one field poisoned.
"""

from __future__ import annotations

import base64
import copy
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("tabulate")
pytest.importorskip("matplotlib")

from test_report import bench_nodeid, earlier_report, find, make_run, snapshot, write

from impls import report, results
from impls.report.text import number


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return earlier_report(tmp_path)


def make_sample(count: int = 18, height: int = 28, width: int = 28) -> dict:
    """``fmbench.sample`` as ``benchmarks/conftest.py`` writes it: uint8 images, base64."""
    images = np.random.default_rng(0).integers(0, 256, (count, height, width), dtype=np.uint8)
    return {
        "images_uint8_base64": base64.b64encode(images.tobytes()).decode(),
        "shape": [count, height, width],
        "labels": [i % 10 for i in range(count)],
    }


# ------------------------------------------------------------- bad inputs


def _assert_rejected(tmp_path: Path, out_dir: Path, document, *needles: str) -> None:
    before = snapshot(out_dir)
    path = write(tmp_path / "bad.json", document)
    with pytest.raises(report.ReportError) as caught:
        report.build_report([path], out_dir)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for needle in needles:
        assert needle in message
    assert snapshot(out_dir) == before, "a rejected input must leave the report untouched"
    assert not list(tmp_path.glob(".reports.tmp-*"))


def test_empty_file(tmp_path: Path, out_dir: Path) -> None:
    _assert_rejected(tmp_path, out_dir, "", "empty file")


def test_truncated_json(tmp_path: Path, out_dir: Path) -> None:
    text = json.dumps(make_run())
    _assert_rejected(tmp_path, out_dir, text[: len(text) // 2], "not valid JSON", "line 1")


def test_not_an_object(tmp_path: Path, out_dir: Path) -> None:
    _assert_rejected(tmp_path, out_dir, "[1, 2]", "not an object")


@pytest.mark.parametrize("key", ["benchmarks", "machine_info", "datetime", "fmbench"])
def test_missing_top_level_key(tmp_path: Path, out_dir: Path, key: str) -> None:
    document = make_run()
    del document[key]
    _assert_rejected(tmp_path, out_dir, document, repr(key))


def test_no_benchmarks(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    document["benchmarks"] = []
    _assert_rejected(tmp_path, out_dir, document, "measured nothing")


def test_missing_extra_info(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    del find(document, "epoch", "numpy")["extra_info"]
    _assert_rejected(tmp_path, out_dir, document, "test_epoch[numpy-cpu]", "'extra_info'")


def test_empty_extra_info(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    find(document, "epoch", "numpy")["extra_info"] = {}
    _assert_rejected(tmp_path, out_dir, document, "test_epoch[numpy-cpu]", "extra_info is empty")


@pytest.mark.parametrize(
    ("kind", "name", "where", "key"),
    [
        ("epoch", "numpy", "stats", "median"),
        ("epoch", "numpy", "stats", "q3"),
        ("epoch", "numpy", "extra_info", "history"),
        ("epoch", "numpy", "extra_info", "kind"),
        ("epoch", "numpy", "extra_info", "num_train"),
        ("startup", "load-cache", "extra_info", "what"),
        ("compute", None, "extra_info", "epoch_flops"),
    ],
)
def test_missing_nested_key(tmp_path, out_dir, kind: str, name, where: str, key: str) -> None:
    document = make_run()
    benchmark = find(document, kind, name)
    del benchmark[where][key]
    _assert_rejected(tmp_path, out_dir, document, benchmark["fullname"], f"{where}", key)


def _set(path: str, value: object):
    """A change to a benchmark item: ``value`` at the dotted ``path`` (list indices as ints)."""

    def change(benchmark: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = benchmark
        for key in parents:
            target = target[key]
        target[last] = value

    return change


@pytest.mark.parametrize(
    ("kind", "name", "path", "value", "field"),
    [
        ("epoch", "numpy", "extra_info.history.0.train_seconds", "0.5", "history[0].train_seconds"),
        ("epoch", "numpy", "extra_info.history.9.test_accuracy", 1.7, "history[9].test_accuracy"),
        ("epoch", "numpy", "extra_info.history.2", [], "extra_info.history[2]"),
        ("epoch", "numpy", "extra_info.history", [], "extra_info.history"),
        ("epoch", "numpy", "extra_info.predictions", [99] * 18, "extra_info.predictions"),
        ("epoch", "numpy", "extra_info.runtime", ["cpu"], "extra_info.runtime"),
        ("epoch", "numpy", "extra_info.num_train", "60000", "extra_info.num_train"),
        ("epoch", "numpy", "extra_info.threads", 2.5, "extra_info.threads"),
        ("epoch", "numpy", "extra_info.batch_size", True, "extra_info.batch_size"),
        ("epoch", "numpy", "extra_info.peak_rss_bytes", 1.5, "extra_info.peak_rss_bytes"),
        ("epoch", "numpy", "extra_info.kind", "epochs", "extra_info.kind"),
        ("epoch", "numpy", "extra_info", ["epoch"], "extra_info"),
        ("epoch", "numpy", "stats", [0.5], "stats"),
        ("epoch", "numpy", "stats.median", "fast", "stats.median"),
        ("epoch", "numpy", "stats.median", 0, "stats.median"),
        ("epoch", "numpy", "stats.rounds", 0, "stats.rounds"),
        ("epoch", "numpy", "group", "sweep: threads", "group"),
        ("compute", None, "extra_info.flops_per_call", 0, "extra_info.flops_per_call"),
        ("limit", None, "extra_info.bytes", -1, "extra_info.bytes"),
        ("startup", "compile-cold", "extra_info.compile_seconds", [0.7, "x"],
         "extra_info.compile_seconds[1]"),
    ],
)  # fmt: skip
def test_a_field_of_the_wrong_type_or_range(
    tmp_path: Path, out_dir: Path, kind: str, name, path: str, value: object, field: str
) -> None:
    """Refused in one line naming the file, the benchmark and the field."""
    document = make_run()
    benchmark = find(document, kind, name)
    _set(path, value)(benchmark)
    _assert_rejected(tmp_path, out_dir, document, benchmark["fullname"], field)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("fmbench.schema", results.SCHEMA + 1, "fmbench.schema"),
        ("fmbench.schema", "2", "fmbench.schema"),
        ("fmbench.tests", None, "fmbench.tests"),
        ("machine_info", [], "machine_info"),
        ("benchmarks.1", "numpy", "benchmarks[1]"),
    ],
)
def test_a_wrong_top_level_field(tmp_path, out_dir, path: str, value: object, field: str) -> None:
    document = make_run()
    _set(path, value)(document)
    _assert_rejected(tmp_path, out_dir, document, field)


def test_missing_benchmark_entry(tmp_path: Path, out_dir: Path) -> None:
    """A test that passed without its entry in the file: the file is partial."""
    document = make_run()
    document["benchmarks"].remove(find(document, "epoch", "d2l-reference"))
    _assert_rejected(tmp_path, out_dir, document, "test_epoch[d2l-reference-cpu]", "partial")


def test_failed_test_with_timing_is_not_reported_as_measured(tmp_path: Path) -> None:
    """pytest-benchmark keeps an entry whose test failed after timing: list it as failed."""
    document = make_run()
    nodeid = bench_nodeid("test_epoch", "numpy-cpu")
    for test in document["fmbench"]["tests"]:
        if test["nodeid"] == nodeid:
            test.update(outcome="failed", reason="AssertionError: accuracy out of range")
    path = write(tmp_path / "run.json", document)
    (run,) = report.load_runs([path])
    assert nodeid not in {entry.fullname for entry in run.entries}
    markdown = report.build_report([run], tmp_path / "out").read_text()
    assert "AssertionError: accuracy out of range" in markdown
    assert f"{number(0.5)} (" not in markdown  # numpy's epoch time is not shown


def test_interrupted_run(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    document["fmbench"]["tests"][-1]["outcome"] = "not run"
    _assert_rejected(tmp_path, out_dir, document, "partial run", "never ran")


def test_one_bad_file_among_good_ones(tmp_path: Path, out_dir: Path) -> None:
    good = write(tmp_path / "good.json", make_run())
    bad = write(tmp_path / "bad.json", "{")
    before = snapshot(out_dir)
    with pytest.raises(report.ReportError, match=r"bad\.json"):
        report.build_report([good, bad], out_dir)
    assert snapshot(out_dir) == before


def test_missing_file(tmp_path: Path, out_dir: Path) -> None:
    with pytest.raises(report.ReportError, match=r"nope\.json: no such file"):
        report.build_report([tmp_path / "nope.json"], out_dir)


def test_inputs_are_not_modified(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    path = write(tmp_path / "run.json", document)
    report.build_report([path], out_dir)
    assert json.loads(path.read_text()) == copy.deepcopy(document)


# ------------------------------------------------------- the run-level sections


def test_a_valid_sample_draws_the_predictions_grid(tmp_path: Path, out_dir: Path) -> None:
    document = make_run()
    document["fmbench"]["sample"] = make_sample()
    markdown = report.build_report([write(tmp_path / "run.json", document)], out_dir).read_text()
    assert "![Predictions of numpy](figures/predictions.png)" in markdown
    assert (out_dir / "figures" / "predictions.png").stat().st_size > 1000


def _b64(size: int) -> str:
    return base64.b64encode(bytes(size)).decode()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("machine_info.fmbench", ["Test CPU", 2], "machine_info.fmbench is list"),
        ("machine_info.fmbench.logical_cpus", "2", "machine_info.fmbench.logical_cpus"),
        ("machine_info.fmbench.memory_bytes", 0, "machine_info.fmbench.memory_bytes"),
        ("machine_info.fmbench.cpu_model", ["Test CPU"], "machine_info.fmbench.cpu_model"),
        ("machine_info.fmbench.versions", ["2.0"], "machine_info.fmbench.versions"),
        ("machine_info.fmbench.versions.numpy", 2.0, "machine_info.fmbench.versions['numpy']"),
        ("machine_info.fmbench.numpy_blas", [["openblas"]], "machine_info.fmbench.numpy_blas[0]"),
        ("machine_info.fmbench.frameworks.numpy", "cpu", "fmbench.frameworks['numpy']"),
        ("machine_info.fmbench.load_average.start", "0.1", "load_average.start"),
        ("machine_info.fmbench.other_cpu_use.other_cpus", "many", "other_cpu_use.other_cpus"),
        ("machine_info.fmbench.other_cpu_use.wall_seconds", 0, "other_cpu_use.wall_seconds"),
        ("machine_info.cpu", ["Test CPU"], "machine_info.cpu"),
        ("machine_info.node", 7, "machine_info.node"),
        ("commit_info.dirty", "no", "commit_info.dirty"),
        ("fmbench.settings", ["epochs", 10], "fmbench.settings"),
        ("fmbench.settings.epochs", "10", "fmbench.settings.epochs"),
        ("fmbench.settings.threads", 0, "fmbench.settings.threads"),
        ("fmbench.settings.quick", "no", "fmbench.settings.quick"),
        ("fmbench.settings.target_accuracy", 82, "fmbench.settings.target_accuracy"),
        ("fmbench.registry.numpy", True, "fmbench.registry['numpy']"),
        ("fmbench.registry.numpy.follows_shared_order", "yes", "follows_shared_order"),
        ("fmbench.sweep_excluded", ["d2l-reference"], "fmbench.sweep_excluded"),
        ("fmbench.run_id", 5, "fmbench.run_id"),
        ("fmbench.tests.0", "passed", "fmbench.tests[0]"),
        ("fmbench.tests.0.outcome", "exploded", "fmbench.tests[0].outcome"),
        ("fmbench.tests.0.reason", ["boom"], "fmbench.tests[0].reason"),
        ("fmbench.sample", "images", "fmbench.sample"),
        ("fmbench.sample.images_uint8_base64", "not base64!", "fmbench.sample.images_uint8_base64"),
        ("fmbench.sample.images_uint8_base64", _b64(100), "holds 100 bytes, not the 14112"),
        ("fmbench.sample.shape", [18, 28, 29], "holds 14112 bytes, not the 14616"),
        ("fmbench.sample.shape", [18, 784], "fmbench.sample.shape"),
        ("fmbench.sample.shape", [18, 28, "28"], "fmbench.sample.shape[2]"),
        ("fmbench.sample.labels", [99] * 18, "fmbench.sample.labels"),
        ("fmbench.sample.labels", [1, 2, 3], "fmbench.sample.labels"),
    ],
)  # fmt: skip
def test_a_run_level_field_of_the_wrong_type_or_range(
    tmp_path: Path, out_dir: Path, path: str, value: object, field: str
) -> None:
    """Refused in one line naming the file and the field, before anything is written."""
    document = make_run()
    document["fmbench"]["sample"] = make_sample()
    _set(path, value)(document)
    _assert_rejected(tmp_path, out_dir, document, field)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("machine_info.fmbench", ["Test CPU", 2], "machine_info.fmbench"),
        ("fmbench.sample.images_uint8_base64", "not base64!", "fmbench.sample.images_uint8_base64"),
        ("fmbench.sample.images_uint8_base64", _b64(100), "fmbench.sample.images_uint8_base64"),
    ],
)  # fmt: skip
def test_main_refuses_a_poisoned_run_with_status_2(
    tmp_path: Path, capsys, path: str, value: object, field: str
) -> None:
    """The command line: status 2 and one line on stderr naming the file and the field."""
    document = make_run()
    document["fmbench"]["sample"] = make_sample()
    _set(path, value)(document)
    run = write(tmp_path / "poisoned.json", document)
    out = earlier_report(tmp_path)
    before = snapshot(out)
    assert report.main([str(run), "--out", str(out), "--previous", "none"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"fmbench report: error: {run}: ") and field in line
    assert snapshot(out) == before
    assert not list(tmp_path.glob(".reports.tmp-*"))


@pytest.mark.parametrize("absent", ["fmbench", "versions", "numpy_blas", "other_cpu_use"])
def test_machine_facts_an_older_file_lacks_are_optional(tmp_path: Path, absent: str) -> None:
    document = make_run()
    if absent == "fmbench":
        del document["machine_info"]["fmbench"]
    else:
        del document["machine_info"]["fmbench"][absent]
    markdown = report.build_report([write(tmp_path / "r.json", document)], tmp_path / "out")
    assert "## Machine" in markdown.read_text()


def test_tests_that_name_the_implementation_the_older_way(tmp_path: Path) -> None:
    """Older files call a test's implementation ``implementation``, not ``impl``: the
    notes on its own minibatch order and on the sweeps it was left out of still name it."""
    document = make_run()
    for test in document["fmbench"]["tests"]:
        test["implementation"] = test.pop("impl")
    markdown = report.build_report([write(tmp_path / "r.json", document)], tmp_path / "out")
    text = markdown.read_text()
    assert "- **Minibatch order**: d2l-reference shuffles with its own" in text
    assert "- **Left out of the sweeps**: d2l-reference: too slow." in text


# ------------------------------------------------------ the autosave folder


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EIO, "Input/output error"),
    ],
    ids=["no-permission", "io-error"],
)
def test_a_saved_runs_folder_that_cannot_be_listed_is_passed_over(
    tmp_path: Path, monkeypatch, error: OSError
) -> None:
    """A folder under ``.benchmarks`` that cannot be listed (faked: the tests run as root,
    who can list anything) is passed over; the runs of the other folders are found."""
    storage = tmp_path / ".benchmarks"
    write(storage / "Linux-a" / "0001_a.json", make_run(run_id="a"))
    write(storage / "Linux-b" / "0001_b.json", make_run(run_id="b"))
    write(storage / "Linux-b" / "deeper" / "0002_b.json", make_run(run_id="b2"))
    unreadable = storage / "Linux-b"
    real = os.scandir

    def scandir(path=".", *args):
        if not isinstance(path, int) and Path(path) == unreadable:  # shutil passes fds
            raise type(error)(error.errno, error.strerror, str(path))
        return real(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    saved = report.load_saved(storage)
    assert [run.run_id for run in saved] == ["a"]
    out = tmp_path / "out"
    assert report.main(["--out", str(out), "--storage", str(storage)]) == 0
    assert "`0001_a.json`" in (out / "README.md").read_text()
