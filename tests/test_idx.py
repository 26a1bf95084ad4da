"""The IDX format (impls.idx): decoding with every header check, encoding, SHA-256 verification.

Pure content: bytes in, arrays or a :class:`~impls.idx.DataError` out; no files, no network.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from impls.idx import (
    ChecksumError,
    CorruptFileError,
    IdxFile,
    encode_idx,
    parse_idx,
    verify,
)

REPO = Path(__file__).resolve().parent.parent


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


IMAGES = IdxFile("train-images-idx3-ubyte", "0" * 64, "images")
LABELS = IdxFile("train-labels-idx1-ubyte", "0" * 64, "labels")
GOOD_IMAGES = encode_idx(np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28) % 256)
GOOD_LABELS = encode_idx(np.array([0, 9, 3], dtype=np.uint8))


@pytest.mark.parametrize(
    ("spec", "raw", "shape"),
    [(IMAGES, GOOD_IMAGES, (2, 28, 28)), (LABELS, GOOD_LABELS, (3,))],
    ids=["images", "labels"],
)
def test_parse_idx_decodes_what_encode_idx_wrote(spec, raw, shape):
    array = parse_idx(raw, spec)
    assert array.shape == shape
    assert array.dtype == np.uint8
    assert encode_idx(array) == raw
    assert raw[:4] == bytes([0, 0, 8, len(shape)])  # the IDX magic, 0x0000080N


def _with_header_byte(raw: bytes, index: int, value: int) -> bytes:
    return raw[:index] + bytes([value]) + raw[index + 1 :]


@pytest.mark.parametrize(
    ("spec", "raw", "message"),
    [
        (LABELS, GOOD_IMAGES, r"3 dimensions, expected 1 .*images file \(files swapped\?\)"),
        (IMAGES, GOOD_LABELS, r"1 dimensions, expected 3 .*labels file \(files swapped\?\)"),
        (IMAGES, _with_header_byte(GOOD_IMAGES, 0, 1), "bad IDX magic 01000803"),
        (LABELS, _with_header_byte(GOOD_LABELS, 1, 0x1F), "bad IDX magic 001f0801"),
        (IMAGES, _with_header_byte(GOOD_IMAGES, 2, 0x0D), "type byte 0x0d, expected 0x08"),
        (LABELS, _with_header_byte(GOOD_LABELS, 3, 2), "2 dimensions, expected 1"),
        (IMAGES, _with_header_byte(GOOD_IMAGES, 3, 4), "4 dimensions, expected 3"),
        (IMAGES, b"", "0 bytes, too short"),
        (IMAGES, GOOD_IMAGES[:10], "truncated inside the IDX header"),
        (IMAGES, encode_idx(np.zeros((2, 27, 28), np.uint8)), "27x28, expected 28x28"),
    ],
    ids=[
        "images-as-labels",
        "labels-as-images",
        "nonzero-first-byte",
        "nonzero-second-byte",
        "float-type-byte",
        "labels-with-2-dims",
        "images-with-4-dims",
        "empty",
        "cut-in-header",
        "wrong-image-size",
    ],
)
def test_parse_idx_rejects_bad_header(spec, raw, message):
    with pytest.raises(CorruptFileError, match=message) as caught:
        parse_idx(raw, spec, origin="/some/dir")
    assert f"{spec.name} (/some/dir)" in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "raw", "message"),
    [
        (IMAGES, GOOD_IMAGES[:-1], "truncated: 1567 bytes of data, the header promises 1568"),
        (LABELS, GOOD_LABELS[:-2], "truncated: 1 bytes of data, the header promises 3"),
        (IMAGES, GOOD_IMAGES + b"\0", "1 trailing bytes after the 1568"),
        (LABELS, GOOD_LABELS + b"\0\0\0", "3 trailing bytes after the 3"),
    ],
    ids=["images-short", "labels-short", "images-trailing", "labels-trailing"],
)
def test_parse_idx_rejects_wrong_payload_length(spec, raw, message):
    with pytest.raises(CorruptFileError, match=message):
        parse_idx(raw, spec)


@pytest.mark.parametrize("bad_label", [10, 255], ids=["label-10", "label-255"])
def test_parse_idx_rejects_label_out_of_range(bad_label):
    raw = encode_idx(np.array([1, 2, bad_label, 3], dtype=np.uint8))
    with pytest.raises(CorruptFileError, match=rf"label {bad_label} at index 2 is outside 0\.\.9"):
        parse_idx(raw, LABELS)


def test_verify_checksum_error_names_file_origin_and_both_hashes():
    spec = IdxFile(LABELS.name, _sha256(GOOD_LABELS), "labels")
    np.testing.assert_array_equal(verify(GOOD_LABELS, spec, "here"), [0, 9, 3])
    other = encode_idx(np.array([0, 9, 4], dtype=np.uint8))
    with pytest.raises(ChecksumError) as caught:
        verify(other, spec, "http://mirror/x.gz")
    message = str(caught.value)
    assert LABELS.name in message
    assert "http://mirror/x.gz" in message
    assert f"is {_sha256(other)}" in message
    assert f"expected {spec.sha256}" in message


def test_caps_follow_the_expected_size():
    sized = IdxFile(IMAGES.name, IMAGES.sha256, "images", len(GOOD_IMAGES))
    assert sized.max_bytes == len(GOOD_IMAGES) + 4096  # parse_idx still names small excesses
    assert sized.max_raw_bytes == 2 * sized.max_bytes  # room for gzip of incompressible data
    noise = np.random.default_rng(0).bytes(sized.max_bytes)  # gzip's worst case: no redundancy
    assert len(gzip.compress(noise)) < sized.max_raw_bytes
    assert IMAGES.size is None
    largest_real = 16 + 60_000 * 28 * 28  # the training images: header, then one byte a pixel
    assert largest_real < IMAGES.max_bytes < 2 * largest_real  # room for it, not for a bomb


def test_checks_hold_under_python_dash_o():
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from impls.idx import CorruptFileError, ChecksumError, IdxFile, encode_idx, verify
        assert False  # stripped: proves -O is in effect
        print(sys.flags.optimize)
        spec = IdxFile("train-labels-idx1-ubyte", "0" * 64, "labels")
        for raw in (encode_idx(np.array([1, 12], np.uint8)), b"\\x00\\x00\\x08\\x01\\x00",
                    encode_idx(np.array([1, 2], np.uint8))):
            try:
                verify(raw, spec, "test")
            except (CorruptFileError, ChecksumError) as error:
                print(type(error).__name__)
            else:
                print("accepted")
        """
    )
    result = subprocess.run(
        [sys.executable, "-O", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "CorruptFileError", "CorruptFileError", "ChecksumError"]
