"""Every file a user can hand us, fuzzed: one sentence or a correct result, nothing lost.

Each reader of the plugin gets small *real* files (crops of Kromp images and masks, slices
of the lab's ``nuclei_128.npz``, the tiny Kromp-trained model of ``conftest.py``, a project
folder with its ledger, a bioimage.io package exported from that model...) and variants
generated from them:

- truncation at every region of the file's own structure (zip members and directory, TIFF
  header, IFDs, tag values and strips, PNG chunks, JPEG segments, pickle opcodes, lines);
- ``hypothesis`` mutations: byte flips, inserted, deleted and overwritten bytes, also
  several at once (a fixed seed, ``derandomize=True``; ``NAPARI_UNET_NUCLEI_FUZZ_EXAMPLES``
  sets how many per reader);
- empty files, swapped extensions (every other reader's file under this reader's name),
  text starting with every printable character;
- folders where files are expected, symbolic links (to a real copy, dangling, a loop, a
  folder, ``/dev/zero``, ``/dev/null``) and a named pipe;
- huge declared sizes (a TIFF, PNG or JPEG header claiming 100,000 x 100,000 pixels, a
  ``.npy`` header, pickled arrays, zip members, a zarr array) and nested zips;
- pickles whose globals would run code, with a sentinel file proving nothing ran.

Every case must end in the reader's own error, whose message is one line naming the file,
or in a correct result; never another exception type, never longer than a time limit
(``SIGALRM``), never with a jump in peak memory; and the files of the case are byte for byte
the same afterwards. The command line (in process and in subprocesses), the napari model
pickers and a batch run with damaged inputs are checked the same way.
``benchmarks/fuzz_readers.py`` runs the same generators with more examples and records the
counts per reader.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import pickle
import resource
import shlex
import shutil
import signal
import string
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_unet_nuclei.io.bioimageio_package import BioimageioPackageError, import_bioimageio
from napari_unet_nuclei.io.datasets import parse_split, read_folder
from napari_unet_nuclei.io.image_files import read_image_file
from napari_unet_nuclei.io.image_inputs import BatchError, open_image
from napari_unet_nuclei.io.lab_files import read_lab_pickle, read_npz
from napari_unet_nuclei.io.labelled import DataError, LabelledImage
from napari_unet_nuclei.io.model_io import ModelFileError, load_model, save_model
from napari_unet_nuclei.io.safe_pickle import UnsafeFileError
from napari_unet_nuclei.io.zarr_io import ZarrFileError, create_ome_zarr, open_zarr_image
from napari_unet_nuclei.nn.model import NucleiModel
from napari_unet_nuclei.prediction.measurements import (
    MeasurementsFileError,
    measure_nuclei,
    read_measurements_csv,
    write_measurements_csv,
)
from napari_unet_nuclei.project.folder import ProjectError, TrainingProject
from napari_unet_nuclei.project.ledger import Ledger, data_item, score_held_out
from napari_unet_nuclei.workflows.batch import segment_files
from napari_unet_nuclei.workflows.bioimageio_export import export_bioimageio
from napari_unet_nuclei.workflows.segment_options import SegmentOptions

#: Generated examples per reader and per hypothesis test (more: the environment variable).
EXAMPLES = int(os.environ.get("NAPARI_UNET_NUCLEI_FUZZ_EXAMPLES", "20"))
#: A case that runs longer than this has hung.
CASE_SECONDS = 30
#: A case whose peak memory grows more than this has allocated what a header declared.
MEMORY_GROWTH_BYTES = 1 << 30
#: Cases per reader and outcome ("refused" or "read"), reported at the end of the module.
COUNTS: dict[str, Counter] = defaultdict(Counter)
#: Some refusal sentences per reader (the first of each kind of case), for reports.
MESSAGES: dict[str, dict[str, str]] = defaultdict(dict)
#: The one line a refusal may not contain.
FORBIDDEN = ("Traceback", 'File "')
CROP = (slice(256, 320), slice(256, 320))
KROMP_NAME = "normal_16"


# ----------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class Reader:
    """A reader of the plugin and a small real sample of what it reads.

    ``files`` maps paths relative to a case folder to their bytes; ``handed`` is what the
    reader is given (``""``: the case folder itself); ``targets`` are the files mutated.
    ``errors`` are the reader's own errors, ``missing_errors`` those it may raise when the
    handed path is not a regular file; ``check`` asserts that a result is a correct one;
    ``same_as_written`` asserts that what the real sample gives back is what was written.
    """

    name: str
    files: dict[str, bytes]
    handed: str
    targets: tuple[str, ...]
    read: Callable[[Path], Any]
    errors: tuple[type[BaseException], ...]
    check: Callable[[Any], None]
    missing_errors: tuple[type[BaseException], ...] = ()
    same_as_written: Callable[[Any], None] | None = None


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _weights(model: NucleiModel) -> dict[str, np.ndarray]:
    return {key: value.numpy().copy() for key, value in model.network.state_dict().items()}


def _check_items(items: Any) -> None:
    assert isinstance(items, list) and items
    for item in items:
        assert isinstance(item, LabelledImage)
        assert item.image.ndim == 2 and item.image.dtype.kind in "biuf"
        assert item.labels.shape == item.image.shape


def _check_image(image: Any) -> None:
    assert isinstance(image, np.ndarray) and image.ndim == 2 and image.size
    assert image.dtype.kind in "biuf"


def build_readers(
    work: Path, kromp_root: Path, lab_arrays: tuple, model: NucleiModel
) -> dict[str, Reader]:
    """Write the real samples under ``work`` and describe each reader.

    Parameters
    ----------
    work : pathlib.Path
        An empty folder.
    kromp_root : pathlib.Path
        The Kromp 2020 data (images/, masks/, splits.json).
    lab_arrays : tuple
        ``(X, Y, names)`` of ``nuclei_128.npz``.
    model : NucleiModel
        A small trained model (``conftest.kromp_tiny_model``).

    Returns
    -------
    dict of str to Reader
    """
    import imageio.v3 as iio
    import torch
    import zarr

    image = tifffile.imread(kromp_root / "images" / f"{KROMP_NAME}.tif")[CROP]
    labels = tifffile.imread(kromp_root / "masks" / f"{KROMP_NAME}.tif")[CROP]
    x, y, names = lab_arrays
    x, y, names = x[:3, :, :32, :32], y[:3, :, :32, :32], names[:3]
    weights = _weights(model)
    readers: dict[str, Reader] = {}

    def check_model(result: Any) -> None:
        assert isinstance(result, NucleiModel)
        read = _weights(result)
        assert read.keys() == weights.keys()
        assert all(np.array_equal(read[key], weights[key]) for key in weights)

    save_model(model, work / "model.pt")
    readers["model .pt"] = Reader(
        "model .pt",
        {"model.pt": (work / "model.pt").read_bytes()},
        "model.pt",
        ("model.pt",),
        load_model,
        (ModelFileError,),
        check_model,
        missing_errors=(FileNotFoundError,),
        same_as_written=check_model,
    )

    def same_items(result: Any, named: bool = True) -> None:
        assert len(result) == len(x)
        if named:  # the lab's pickle holds no names
            assert [item.name for item in result] == [str(n) for n in names]
        for item, image_, label_ in zip(result, x[:, 0], y[:, 0]):
            np.testing.assert_array_equal(item.image, image_)
            np.testing.assert_array_equal(item.labels > 0, label_ > 0)

    for name, write in (("npz", np.savez), ("npz (compressed)", np.savez_compressed)):
        stream = io.BytesIO()
        write(stream, X=x, Y=y, names=names)
        readers[name] = Reader(
            name,
            {"data.npz": stream.getvalue()},
            "data.npz",
            ("data.npz",),
            read_npz,
            (DataError,),
            _check_items,
            same_as_written=same_items,
        )

    tensors = (
        torch.from_numpy(np.ascontiguousarray(x)),
        torch.from_numpy(np.ascontiguousarray(y)),
    )
    readers["lab .pck"] = Reader(
        "lab .pck",
        {"data.pck": pickle.dumps(tensors, protocol=4)},
        "data.pck",
        ("data.pck",),
        read_lab_pickle,
        (DataError, UnsafeFileError),
        _check_items,
        same_as_written=lambda result: same_items(result, named=False),
    )

    def equal_to(expected: np.ndarray, tolerance: float = 0.0) -> Callable[[Any], None]:
        def same(result: Any) -> None:
            assert result.shape == expected.shape
            difference = np.abs(result.astype(np.float64) - expected.astype(np.float64))
            assert difference.mean() <= tolerance, difference.mean()

        return same

    for name, file, data, expected, tolerance in (
        ("TIFF", "kromp_crop.tif", _tiff_bytes(image, compression="zlib"), image, 0.0),
        ("TIFF (uncompressed)", "kromp_crop.tif", _tiff_bytes(labels), labels, 0.0),
        ("PNG", "kromp_crop.png", iio.imwrite("<bytes>", image, extension=".png"), image, 0.0),
        # JPEG is lossy: within a few grey levels on average.
        ("JPEG", "kromp_crop.jpg", iio.imwrite("<bytes>", image, extension=".jpg"), image, 3.0),
    ):
        readers[name] = Reader(
            name,
            {file: data},
            file,
            (file,),
            read_image_file,
            (DataError,),
            _check_image,
            same_as_written=equal_to(expected, tolerance),
        )

    readers["dataset folder"] = Reader(
        "dataset folder",
        {
            "images/kromp_crop.tif": _tiff_bytes(image, compression="zlib"),
            "masks/kromp_crop.png": iio.imwrite("<bytes>", labels, extension=".png"),
        },
        "",
        ("images/kromp_crop.tif", "masks/kromp_crop.png"),
        read_folder,
        (DataError,),
        _check_items,
        same_as_written=lambda result: (
            np.testing.assert_array_equal(result[0].image, image),
            np.testing.assert_array_equal(result[0].labels, labels),
        ),
    )

    written_split = json.loads((kromp_root / "splits.json").read_text())["lab_70_9"]

    def check_split(result: Any) -> None:
        train, test = result
        assert all(isinstance(n, str) for n in [*train, *test])

    readers["splits.json"] = Reader(
        "splits.json",
        {"splits.json": (kromp_root / "splits.json").read_bytes()},
        "splits.json",
        ("splits.json",),
        lambda path: parse_split(f"{path}:lab_70_9"),
        (DataError,),
        check_split,
        same_as_written=lambda result: (
            (
                list(result[0]) == list(written_split["train"])
                and list(result[1]) == list(written_split["test"])
            )
            or pytest.fail("the split read differs from the file")
        ),
    )

    def check_zarr(result: Any) -> None:
        array, _axes = result
        assert array.ndim >= 2 and np.dtype(array.dtype).kind in "biuf"

    ome = work / "kromp_crop.ome.zarr"
    create_ome_zarr(ome, image.shape, image.dtype)[...] = image
    files = _folder_bytes(ome)
    readers["OME-Zarr"] = Reader(
        "OME-Zarr",
        files,
        "",
        ("0/.zarray", ".zattrs", ".zgroup"),
        open_zarr_image,
        (ZarrFileError,),
        check_zarr,
        same_as_written=lambda result: np.testing.assert_array_equal(np.asarray(result[0]), image),
    )
    plain = work / "plain.zarr"
    zarr.create_array(
        store=str(plain), shape=image.shape, chunks=(32, 32), dtype="uint8", zarr_format=3
    )[...] = image
    files = _folder_bytes(plain)
    readers["zarr array (v3)"] = Reader(
        "zarr array (v3)",
        files,
        "",
        ("zarr.json",),
        open_zarr_image,
        (ZarrFileError,),
        check_zarr,
        same_as_written=lambda result: np.testing.assert_array_equal(np.asarray(result[0]), image),
    )

    project_folder = work / "project"
    project = TrainingProject.create(project_folder)
    project.add(image, labels, "kromp crop")
    project.add(image[::-1], labels[::-1], "kromp crop flipped", role="held-out")
    held_out = score_held_out(model, [image[::-1]], [labels[::-1]], names=["kromp crop flipped"])
    Ledger(project_folder).record(
        model,
        data=[data_item("kromp crop", image, labels)],
        settings={"epochs": 1},
        training={"stop": "done"},
        held_out=held_out,
    )
    files = _folder_bytes(project_folder)

    def same_project(result: Any) -> None:
        (train,), (held,) = result.samples(), result.samples("held-out")
        assert (train.entry.name, held.entry.name) == ("kromp crop", "kromp crop flipped")
        np.testing.assert_array_equal(train.image, image)
        np.testing.assert_array_equal(train.labels, labels)
        np.testing.assert_array_equal(held.image, image[::-1])

    def read_project(folder: Path) -> Any:
        opened = TrainingProject.open(folder)
        opened.describe()
        return opened

    readers["project.json"] = Reader(
        "project.json",
        files,
        "",
        ("project.json",),
        read_project,
        (ProjectError,),
        lambda result: isinstance(result, TrainingProject) or pytest.fail("not a project"),
        same_as_written=same_project,
    )

    def read_ledger(folder: Path) -> Any:
        ledger = Ledger(folder)
        for item in ledger.rounds:
            ledger.curve(item.number)
            ledger.regression_warning(item.number)
        return ledger

    readers["ledger.json"] = Reader(
        "ledger.json",
        files,
        "",
        ("ledger.json",),
        read_ledger,
        (ProjectError,),
        lambda result: isinstance(result, Ledger) or pytest.fail("not a ledger"),
        same_as_written=lambda result: (
            (len(result.rounds) == 1 and result.rounds[0].held_out.to_dict() == held_out.to_dict())
            or pytest.fail("the ledger read differs from the one written")
        ),
    )

    table = measure_nuclei(labels, image)
    write_measurements_csv(table, work / "kromp_crop_nuclei.csv")

    def same_table(result: Any) -> None:
        assert list(result) == list(table)
        for column, values in table.items():
            read = np.asarray(result[column])
            if np.asarray(values).dtype.kind in "f":
                np.testing.assert_allclose(read.astype(float), values, rtol=1e-6, equal_nan=True)
            else:
                np.testing.assert_array_equal(read, values)

    def check_table(result: Any) -> None:
        assert isinstance(result, dict)
        assert len({len(column) for column in result.values()}) <= 1

    readers["measurements CSV"] = Reader(
        "measurements CSV",
        {"kromp_crop_nuclei.csv": (work / "kromp_crop_nuclei.csv").read_bytes()},
        "kromp_crop_nuclei.csv",
        ("kromp_crop_nuclei.csv",),
        read_measurements_csv,
        (MeasurementsFileError,),
        check_table,
        same_as_written=same_table,
    )

    package = export_bioimageio(
        model, work / "package.zip", test_image=image, weights=("pytorch_state_dict",)
    )
    readers["bioimage.io zip"] = Reader(
        "bioimage.io zip",
        {"package.zip": package.read_bytes()},
        "package.zip",
        ("package.zip",),
        import_bioimageio,
        (BioimageioPackageError,),
        check_model,
        same_as_written=check_model,
    )

    stack = tifffile.imread(kromp_root.parent / "nuclei3d" / "nuclei.tif")[:5, :64, :64]

    def read_batch(path: Path) -> Any:
        with open_image(path) as (data, _axes):
            return np.asarray(data)

    readers["batch input (TIFF stack)"] = Reader(
        "batch input (TIFF stack)",
        {"stack.tif": _tiff_bytes(stack, compression="zlib")},
        "stack.tif",
        ("stack.tif",),
        read_batch,
        (BatchError,),
        lambda result: (
            (isinstance(result, np.ndarray) and result.ndim >= 2) or pytest.fail("not an image")
        ),
        same_as_written=lambda result: np.testing.assert_array_equal(result, stack),
    )
    return readers


def _tiff_bytes(array: np.ndarray, **options: Any) -> bytes:
    stream = io.BytesIO()
    tifffile.imwrite(stream, array, photometric="minisblack", **options)
    return stream.getvalue()


# ----------------------------------------------------------------------------- regions
def regions_of(data: bytes) -> list[tuple[int, int]]:
    """The structural regions of a file, as ``(start, end)`` byte spans."""
    spans: list[tuple[int, int]] = []
    parsers = (
        (b"PK\x03\x04", _zip_regions),
        (b"II*\x00", _tiff_regions),
        (b"MM\x00*", _tiff_regions),
        (b"\x89PNG", _png_regions),
        (b"\xff\xd8", _jpeg_regions),
        (b"\x80", _pickle_regions),
    )
    for magic, parse in parsers:
        if data.startswith(magic):
            with contextlib.suppress(Exception):
                spans = parse(data)
            break
    else:
        start = 0
        for line in data.splitlines(keepends=True):
            spans.append((start, start + len(line)))
            start += len(line)
    size = len(data)
    spans = sorted({(max(0, a), min(size, b)) for a, b in spans if a < size and a < b})
    if not spans:  # a fallback: quarters
        step = max(1, size // 4)
        spans = [(a, min(size, a + step)) for a in range(0, size, step)]
    return spans or [(0, 0)]


def _zip_regions(data: bytes) -> list[tuple[int, int]]:
    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            header = info.header_offset
            name_length, extra_length = struct.unpack_from("<HH", data, header + 26)
            start = header + 30 + name_length + extra_length
            spans += [(header, start), (start, start + info.compress_size)]
    end = data.rfind(b"PK\x05\x06")
    directory = struct.unpack_from("<I", data, end + 16)[0]
    return [*spans, (directory, end), (end, len(data))]


def _tiff_regions(data: bytes) -> list[tuple[int, int]]:
    spans = [(0, 8)]
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        for page in tif.pages:
            spans.append((page.offset, page.offset + 2 + 12 * len(page.tags) + 4))
            for tag in page.tags:
                if tag.valueoffset != tag.offset + 8:
                    spans.append((tag.valueoffset, tag.valueoffset + tag.valuebytecount))
            spans += [(o, o + n) for o, n in zip(page.dataoffsets, page.databytecounts)]
    return spans


def _png_regions(data: bytes) -> list[tuple[int, int]]:
    spans, position = [(0, 8)], 8
    while position + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        spans.append((position, position + 12 + length))
        position += 12 + length
    return spans


def _jpeg_regions(data: bytes) -> list[tuple[int, int]]:
    spans, position = [(0, 2)], 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        (length,) = struct.unpack_from(">H", data, position + 2)
        spans.append((position, position + 2 + length))
        position += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the end marker
            spans += [(position, len(data) - 2), (len(data) - 2, len(data))]
            break
    return spans


def _pickle_regions(data: bytes) -> list[tuple[int, int]]:
    import pickletools

    positions = [position for _op, _arg, position in pickletools.genops(data)]
    positions.append(len(data))
    return list(itertools.pairwise(positions))


def cut_points(data: bytes, limit: int = 48) -> list[int]:
    """Offsets to truncate at: the start and middle of every region (at most ``limit``)."""
    points = sorted({p for a, b in regions_of(data) for p in (a, (a + b) // 2)} | {0})
    if len(points) > limit:
        points = [points[round(i * (len(points) - 1) / (limit - 1))] for i in range(limit)]
    return points


# ----------------------------------------------------------------------------- one case
class CaseTimeout(BaseException):
    """A case ran past :data:`CASE_SECONDS` (a BaseException: readers cannot swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread after ``seconds``."""

    def expire(_signum: int, _frame: Any) -> None:
        raise CaseTimeout(f"a case ran longer than {seconds} s: the reader hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def snapshot(folder: Path) -> dict[str, Any]:
    """Every entry under ``folder``: file bytes, link targets, folders, pipes."""
    entries: dict[str, Any] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                entries[key] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[key] = ("dir",)
            elif path.is_file():
                entries[key] = ("file", path.read_bytes())
            else:
                entries[key] = ("special", os.stat(path).st_mode)
    return entries


_CASE_NUMBER = [0]


def new_case(work: Path, reader: Reader, files: dict[str, bytes | None] | None = None) -> Path:
    """A fresh case folder holding the reader's sample with ``files`` replaced (None: removed)."""
    _CASE_NUMBER[0] += 1
    case = work / f"case-{_CASE_NUMBER[0]:06d}"
    case.mkdir(parents=True)
    contents = {**reader.files, **(files or {})}
    for name, data in contents.items():
        path = case / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
    return case


def check_sentence(message: str, reader: Reader, case: Path) -> None:
    """A refusal is one line that names the file (or its folder) and no traceback."""
    assert message.strip(), f"{reader.name}: an empty message"
    assert "\n" not in message.strip(), f"{reader.name}: a message of several lines: {message!r}"
    assert not any(word in message for word in FORBIDDEN), message
    assert len(message) < 1200, message
    names = {
        case.name,
        *(Path(t).name for t in reader.targets),
        *(Path(t).stem for t in reader.targets),
    }
    if reader.handed:
        names.add(Path(reader.handed).name)
    assert any(name and name in message for name in names), (
        f"{reader.name}: the message does not name the file: {message!r}"
    )


def run_case(
    reader: Reader,
    case: Path,
    kind: str,
    *,
    expect_refusal: bool = False,
    allow_missing: bool = False,
) -> str:
    """Read ``case`` with ``reader``; assert the outcome; return "refused" or "read"."""
    handed = case / reader.handed if reader.handed else case
    before = snapshot(case)
    peak = _peak_rss()
    errors = reader.errors + (reader.missing_errors if allow_missing else ())
    try:
        with time_limit(CASE_SECONDS):
            result = reader.read(handed)
    except errors as error:
        outcome = "refused"
        message = str(error)
        if isinstance(error, FileNotFoundError) and error.args and isinstance(error.args[0], str):
            message = error.args[0]
        check_sentence(message, reader, case)
        if len(MESSAGES[reader.name]) < 12:
            MESSAGES[reader.name].setdefault(kind, message.replace(str(case), "<case>"))
    else:
        assert not expect_refusal, f"{reader.name}: {kind} was read instead of refused"
        reader.check(result)
        outcome = "read"
        del result
    growth = _peak_rss() - peak
    assert growth < MEMORY_GROWTH_BYTES, f"{reader.name}: {kind} grew memory by {growth} bytes"
    assert snapshot(case) == before, f"{reader.name}: {kind} changed the user's files"
    COUNTS[reader.name][outcome] += 1
    shutil.rmtree(case, ignore_errors=True)
    return outcome


# ----------------------------------------------------------------------------- mutations
@st.composite
def mutated(draw: Any, data: bytes, spans: list[tuple[int, int]]) -> bytes:
    """Up to three mutations of ``data`` inside its structural regions."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        start, end = draw(st.sampled_from(spans))
        end = min(end, len(out))
        start = min(start, max(0, end - 1))
        offset = draw(st.integers(start, max(start, end - 1))) if out else 0
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite"]))
        if kind == "truncate":
            del out[offset:]
        elif kind == "flip" and offset < len(out):
            out[offset] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            out[offset:offset] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[offset : offset + draw(st.integers(1, 64))]
        else:
            patch = draw(st.binary(min_size=1, max_size=8))
            out[offset : offset + len(patch)] = patch
    return bytes(out)


def fuzz_reader(reader: Reader, work: Path, examples: int = EXAMPLES) -> None:
    """Run ``examples`` hypothesis-generated mutations of the reader's sample."""
    spans = {target: regions_of(reader.files[target]) for target in reader.targets}

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=timedelta(seconds=CASE_SECONDS),
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def case(data: Any) -> None:
        target = data.draw(st.sampled_from(reader.targets))
        content = data.draw(mutated(reader.files[target], spans[target]))
        run_case(reader, new_case(work, reader, {target: content}), "a mutated file")

    case()


def truncations(reader: Reader, work: Path) -> int:
    """Truncate every target at the start and middle of each of its regions."""
    count = 0
    for target in reader.targets:
        data = reader.files[target]
        for cut in cut_points(data):
            run_case(reader, new_case(work, reader, {target: data[:cut]}), f"cut at {cut}")
            count += 1
    return count


def leading_characters(reader: Reader, work: Path) -> int:
    """Text starting with each printable character, in place of the first target."""
    for character in string.printable:
        text = f"{character}his is not a napari-unet-nuclei file, just text.\n".encode()
        run_case(reader, new_case(work, reader, {reader.targets[0]: text}), repr(character))
    return len(string.printable)


def swapped_and_empty(reader: Reader, others: dict[str, Reader], work: Path) -> int:
    """An empty file, and every other reader's file under this reader's name."""
    target = reader.targets[0]
    run_case(reader, new_case(work, reader, {target: b""}), "an empty file", expect_refusal=True)
    count = 1
    for other in others.values():
        if other.name == reader.name:
            continue
        for name in other.targets[:1]:
            run_case(reader, new_case(work, reader, {target: other.files[name]}), other.name)
            count += 1
    return count


def not_files(reader: Reader, work: Path) -> int:
    """Folders, links and a pipe where the reader expects a file."""
    target = reader.targets[0]
    real = work / f"real-copy-{reader.name.replace(' ', '_')}{Path(target).suffix}"
    real.write_bytes(reader.files[target])

    def folder(path: Path) -> None:
        path.mkdir()

    def folder_with_files(path: Path) -> None:
        path.mkdir()
        (path / "inside.txt").write_text("a file in a folder")

    cases: dict[str, tuple[Callable[[Path], None], bool]] = {
        "a folder": (folder, True),
        "a folder with files": (folder_with_files, True),
        "a dangling link": (lambda p: p.symlink_to(p.parent / "missing-target"), True),
        "a link loop": (lambda p: p.symlink_to(p), True),
        "a link to a folder": (lambda p: p.symlink_to(p.parent, target_is_directory=True), True),
        "a link to /dev/zero": (lambda p: p.symlink_to("/dev/zero"), True),
        "a link to /dev/null": (lambda p: p.symlink_to("/dev/null"), True),
        "a named pipe": (lambda p: os.mkfifo(p), True),
        "a link to a real copy": (lambda p: p.symlink_to(real), False),
    }
    for kind, (make, refused) in cases.items():
        case = new_case(work, reader, {target: None})
        make(case / target)
        outcome = run_case(reader, case, kind, expect_refusal=refused, allow_missing=True)
        if not refused:
            assert outcome == "read", f"{reader.name}: a link to a real copy was refused"
    return len(cases)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def readers(tmp_path_factory, kromp_root, lab_arrays, kromp_tiny_model) -> dict[str, Reader]:
    return build_readers(
        tmp_path_factory.mktemp("samples"), kromp_root, lab_arrays, kromp_tiny_model
    )


@pytest.fixture
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cases")


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not COUNTS:
        return
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        reporter.write_line("fuzzed readers: cases (refused with a sentence / read correctly)")
        for line in count_table():
            reporter.write_line(f"  {line}")


def count_table(counts: dict[str, Counter] | None = None) -> list[str]:
    """One line per reader: all cases, refused with a sentence, read correctly."""
    counts = COUNTS if counts is None else counts
    lines = []
    for name, seen in counts.items():
        total = sum(seen.values())
        lines.append(f"{name:<26} {total:6d} ({seen['refused']} refused / {seen['read']} read)")
    return lines


READER_NAMES = (
    "model .pt",
    "npz",
    "npz (compressed)",
    "lab .pck",
    "TIFF",
    "TIFF (uncompressed)",
    "PNG",
    "JPEG",
    "dataset folder",
    "splits.json",
    "OME-Zarr",
    "zarr array (v3)",
    "project.json",
    "ledger.json",
    "measurements CSV",
    "bioimage.io zip",
    "batch input (TIFF stack)",
)


def test_every_reader_reads_its_real_sample(readers, work) -> None:
    assert set(readers) == set(READER_NAMES)
    for reader in readers.values():
        assert run_case(reader, new_case(work, reader), "the real sample") == "read"


def test_every_real_sample_reads_back_what_was_written(readers, work) -> None:
    """Not only a plausible result: the arrays, names, scores and weights written."""
    for reader in readers.values():
        assert reader.same_as_written is not None, reader.name
        case = new_case(work, reader)
        result = reader.read(case / reader.handed if reader.handed else case)
        reader.same_as_written(result)
        shutil.rmtree(case, ignore_errors=True)


@pytest.mark.parametrize("name", READER_NAMES)
def test_truncated_at_every_region(name, readers, work) -> None:
    assert truncations(readers[name], work) >= 2


@pytest.mark.parametrize("name", READER_NAMES)
def test_generated_mutations(name, readers, work) -> None:
    fuzz_reader(readers[name], work)


@pytest.mark.parametrize("name", READER_NAMES)
def test_text_empty_swapped_and_not_files(name, readers, work) -> None:
    reader = readers[name]
    leading_characters(reader, work)
    swapped_and_empty(reader, readers, work)
    not_files(reader, work)
    if reader.targets[0].endswith(".csv"):
        return  # one line of text is a valid (empty) table
    assert COUNTS[name]["refused"] >= len(string.printable)


# ----------------------------------------------------------------------------- huge sizes
HUGE = 100_000


def _tiff_claiming(data: bytes, side: int = HUGE) -> bytes:
    """The TIFF with ImageWidth and ImageLength set to ``side`` (LONG values)."""
    raw = bytearray(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        for code in (256, 257):
            tag = page.tags[code]
            struct.pack_into("<HHI", raw, tag.offset, code, 4, 1)
            struct.pack_into("<I", raw, tag.valueoffset, side)
    return bytes(raw)


def _png_claiming(data: bytes, side: int = HUGE) -> bytes:
    raw = bytearray(data)
    struct.pack_into(">II", raw, 16, side, side)
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def _jpeg_claiming(data: bytes) -> bytes:
    raw = bytearray(data)
    position = 2
    while raw[position + 1] not in (0xC0, 0xC1, 0xC2):
        position += 2 + struct.unpack_from(">H", raw, position + 2)[0]
    struct.pack_into(">HH", raw, position + 5, 65_000, 65_000)
    return bytes(raw)


def _npz_claiming(shape: tuple[int, ...]) -> bytes:
    """An ``.npz`` whose ``X.npy`` header declares ``shape`` over a few bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + b"\x00" * 64
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("X.npy", npy)
        archive.writestr("Y.npy", npy)
    return stream.getvalue()


def _zip_declaring(data: bytes, size: int = 100 << 30) -> bytes:
    """The zip archive with every member's size in the central directory set to ``size``
    (zip64 extra fields added), so that a reader trusting it would allocate that much."""
    source = zipfile.ZipFile(io.BytesIO(data))
    raw = bytearray(data)
    end = raw.rfind(b"PK\x05\x06")
    position = struct.unpack_from("<I", raw, end + 16)[0]
    for _info in source.infolist():
        assert raw[position : position + 4] == b"PK\x01\x02"
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", raw, position + 28)
        struct.pack_into("<I", raw, position + 24, 0xFFFFFFFF)  # uncompressed size -> zip64
        extra = struct.pack("<HHQ", 0x0001, 8, size)
        start = position + 46 + name_length
        old_extra = bytes(raw[start : start + extra_length])
        cleaned = _without_zip64(old_extra)
        raw[start : start + extra_length] = extra + cleaned
        struct.pack_into("<H", raw, position + 30, len(extra) + len(cleaned))
        position = start + len(extra) + len(cleaned) + comment_length
    end = raw.rfind(b"PK\x05\x06")
    directory = struct.unpack_from("<I", raw, end + 16)[0]
    struct.pack_into("<I", raw, end + 12, end - directory)
    return bytes(raw)


def _without_zip64(extra: bytes) -> bytes:
    out, position = b"", 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, position)
        if kind != 0x0001:
            out += extra[position : position + 4 + length]
        position += 4 + length
    return out


def _pickle_claiming_array() -> bytes:
    """A pickle calling ``numpy.ndarray((100000, 100000), 'f8')``: 80 GB, never filled."""
    return (
        b"\x80\x02cnumpy\nndarray\n"
        + b"J\xa0\x86\x01\x00J\xa0\x86\x01\x00\x86"  # (100000, 100000)
        + b"X\x02\x00\x00\x00f8\x86R"  # ('f8',) -> REDUCE
        + b"."
    )


def _pickle_claiming_tensor() -> bytes:
    """A pickled tensor whose size is 100,000 x 100,000 over a storage of 4 floats."""
    import torch

    data = bytearray(pickle.dumps((torch.zeros(2, 2),), protocol=2))
    small = b"K\x02K\x02\x86"  # the size tuple (2, 2)
    position = data.rfind(small)
    assert position > 0
    data[position : position + len(small)] = b"J\xa0\x86\x01\x00J\xa0\x86\x01\x00\x86"
    return bytes(data)


def test_huge_declared_sizes_are_refused_before_allocating(readers, work) -> None:
    cases: list[tuple[str, str, bytes]] = [
        ("TIFF", "kromp_crop.tif", _tiff_claiming(readers["TIFF"].files["kromp_crop.tif"])),
        (
            "TIFF (uncompressed)",
            "kromp_crop.tif",
            _tiff_claiming(readers["TIFF (uncompressed)"].files["kromp_crop.tif"]),
        ),
        ("PNG", "kromp_crop.png", _png_claiming(readers["PNG"].files["kromp_crop.png"])),
        ("JPEG", "kromp_crop.jpg", _jpeg_claiming(readers["JPEG"].files["kromp_crop.jpg"])),
        (
            "dataset folder",
            "images/kromp_crop.tif",
            _tiff_claiming(readers["dataset folder"].files["images/kromp_crop.tif"]),
        ),
        ("npz", "data.npz", _npz_claiming((HUGE, HUGE))),
        ("npz", "data.npz", _npz_claiming((2**62, 2))),
        ("lab .pck", "data.pck", _pickle_claiming_array()),
        ("lab .pck", "data.pck", _pickle_claiming_tensor()),
        ("model .pt", "model.pt", _zip_declaring(readers["model .pt"].files["model.pt"])),
        ("lab .pck", "data.pck", _zip_declaring(readers["model .pt"].files["model.pt"])),
        (
            "bioimage.io zip",
            "package.zip",
            _zip_declaring(readers["bioimage.io zip"].files["package.zip"]),
        ),
        (
            "batch input (TIFF stack)",
            "stack.tif",
            _tiff_claiming(readers["batch input (TIFF stack)"].files["stack.tif"]),
        ),
    ]
    for name, target, data in cases:
        reader = readers[name]
        case = new_case(work, reader, {target: data})
        run_case(reader, case, "a huge declared size", expect_refusal=True)
    # A zarr array may be huge: it is opened lazily, and nothing is allocated.
    reader = readers["zarr array (v3)"]
    meta = json.loads(reader.files["zarr.json"])
    meta["shape"] = [HUGE, HUGE]
    case = new_case(work, reader, {"zarr.json": json.dumps(meta).encode()})
    assert run_case(reader, case, "a huge zarr array") == "read"


def test_nested_zips_are_refused(readers, work) -> None:
    def zipped(name: str, data: bytes) -> bytes:
        stream = io.BytesIO()
        with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(name, data)
        return stream.getvalue()

    for name, target in (
        ("model .pt", "model.pt"),
        ("npz", "data.npz"),
        ("lab .pck", "data.pck"),
        ("bioimage.io zip", "package.zip"),
        ("TIFF", "kromp_crop.tif"),
    ):
        reader = readers[name]
        inner = reader.files[target]
        once = zipped(target, inner)
        for data in (once, zipped("inner.zip", once), zipped("X.npy", inner)):
            case = new_case(work, reader, {target: data})
            run_case(reader, case, "a nested zip", expect_refusal=True)


# ----------------------------------------------------------------------------- code
class Payload:
    """Unpickling this calls ``function(*args)``: each one writes the sentinel file."""

    def __init__(self, function: Callable[..., Any], args: tuple) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return (self.function, self.args)


def payloads(sentinel: Path) -> dict[str, Payload]:
    """Pickled calls that create ``sentinel`` when a naive loader runs them."""
    return {
        "os.system": Payload(os.system, (f"touch {shlex.quote(str(sentinel))}",)),
        "builtins.exec": Payload(exec, (f"open({str(sentinel)!r}, 'w').close()",)),
        "builtins.eval": Payload(eval, (f"open({str(sentinel)!r}, 'w').close()",)),
        "builtins.open": Payload(open, (str(sentinel), "w")),
        "subprocess.call": Payload(subprocess.call, (["touch", str(sentinel)],)),
        "pathlib.Path.write_text": Payload(Path.write_text, (sentinel, "ran")),
    }


def test_every_payload_really_runs_code_with_a_naive_loader(tmp_path) -> None:
    sentinel = tmp_path / "sentinel"
    for name, payload in payloads(sentinel).items():
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            try:
                data = pickle.dumps(payload, protocol=protocol)
            except (pickle.PicklingError, AttributeError):
                continue
            pickle.loads(data)
            assert sentinel.exists(), f"{name} did not run with pickle.loads"
            sentinel.unlink()


def _crafted_file(kind: str, payload: Payload, protocol: int, wrap: str, readers, model_bytes):
    import torch

    tensor = torch.zeros(2, 1, 8, 8)
    wrapped = {
        "alone": payload,
        "beside a tensor": (tensor, payload),
        "deep inside": [tensor, {"a": [(payload,)]}],
    }[wrap]
    if kind == "lab .pck":
        return "data.pck", pickle.dumps(wrapped, protocol=protocol)
    if kind == "model .pt":
        model = torch.load(io.BytesIO(model_bytes), weights_only=True)
        model["summary"] = {"note": wrapped}
        stream = io.BytesIO()
        torch.save(model, stream, pickle_protocol=max(protocol, 2))
        return "model.pt", stream.getvalue()
    if kind == "npz":
        stream = io.BytesIO()
        objects = np.empty(2, dtype=object)
        objects[0], objects[1] = wrapped, 1
        np.savez(stream, X=objects, Y=np.zeros((2, 8, 8)))
        return "data.npz", stream.getvalue()
    # a bioimage.io package whose weights file (and its SHA-256) were replaced
    import hashlib

    import yaml

    stream = io.BytesIO()
    torch.save({"weights": wrapped}, stream, pickle_protocol=max(protocol, 2))
    weights = stream.getvalue()
    source = zipfile.ZipFile(io.BytesIO(readers["bioimage.io zip"].files["package.zip"]))
    rdf = yaml.safe_load(source.read("rdf.yaml"))
    entry = rdf["weights"]["pytorch_state_dict"]
    entry["sha256"] = hashlib.sha256(weights).hexdigest()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == entry["source"]:
                data = weights
            elif info.filename == "rdf.yaml":
                data = yaml.safe_dump(rdf).encode()
            archive.writestr(info.filename, data)
    return "package.zip", out.getvalue()


def test_pickles_that_would_run_code_never_run(readers, work) -> None:
    sentinel = work / "sentinel"
    names = sorted(payloads(sentinel))
    model_bytes = readers["model .pt"].files["model.pt"]

    @settings(
        max_examples=max(EXAMPLES * 2, 24),
        derandomize=True,
        database=None,
        deadline=timedelta(seconds=CASE_SECONDS),
        suppress_health_check=list(HealthCheck),
    )
    @given(
        kind=st.sampled_from(["lab .pck", "model .pt", "npz", "bioimage.io zip"]),
        payload=st.sampled_from(names),
        protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
        wrap=st.sampled_from(["alone", "beside a tensor", "deep inside"]),
    )
    def case(kind: str, payload: str, protocol: int, wrap: str) -> None:
        reader = readers[kind]
        try:
            target, data = _crafted_file(
                kind, payloads(sentinel)[payload], protocol, wrap, readers, model_bytes
            )
        except (pickle.PicklingError, AttributeError):  # not picklable with this protocol
            return
        run_case(reader, new_case(work, reader, {target: data}), "code", expect_refusal=True)
        assert not sentinel.exists(), f"{payload} in a {kind} ran"

    case()


# ----------------------------------------------------------------------------- command line
def _cli(args: list[str], capsys) -> tuple[int, list[str]]:
    from napari_unet_nuclei.cli import main

    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def test_command_line_refuses_bad_files_with_one_sentence(readers, work, capsys) -> None:
    good_npz = work / "good.npz"
    good_npz.write_bytes(readers["npz"].files["data.npz"])
    good_model = work / "good.pt"
    good_model.write_bytes(readers["model .pt"].files["model.pt"])
    image = work / "kromp_crop.tif"
    image.write_bytes(readers["TIFF"].files["kromp_crop.tif"])
    out = work / "out"
    bad_files = []
    for character in "tNaqr#{0 ":
        bad = work / f"text_{ord(character)}.pt"
        bad.write_text(f"{character}his is not a model\n")
        bad_files.append(bad)
    model_bytes = readers["model .pt"].files["model.pt"]
    for cut in cut_points(model_bytes, limit=6)[1:]:
        bad = work / f"cut_{cut}.pt"
        bad.write_bytes(model_bytes[:cut])
        bad_files.append(bad)
    for bad in bad_files:
        before = bad.read_bytes()
        for args in (
            ["segment", "--model", str(bad), str(image), "--out", str(out)],
            ["evaluate", "--model", str(bad), "--data", str(good_npz)],
            ["export", "--model", str(bad), "--format", "onnx", "--out", str(work / "x.onnx")],
            ["train", "--data", str(good_npz), "--init", str(bad), "--out", str(work / "m.pt")],
        ):
            code, err = _cli(args, capsys)
            assert code == 2, (args, err)
            assert len(err) == 1 and err[0].startswith(f"napari-unet-nuclei {args[0]}: error:")
            assert bad.name in err[0] and "Traceback" not in err[0]
        assert bad.read_bytes() == before
    for name in ("npz", "lab .pck"):
        target = readers[name].targets[0]
        for character in "tN#":
            data = work / f"text{ord(character)}_{target}"
            data.write_text(f"{character}his is not data\n")
            for args in (
                ["train", "--data", str(data), "--out", str(work / "m.pt")],
                ["evaluate", "--model", str(good_model), "--data", str(data)],
            ):
                code, err = _cli(args, capsys)
                assert code == 2 and len(err) == 1 and data.name in err[0], (args, err)
    assert not out.exists() or not any(out.glob("*.tif"))
    assert not (work / "x.onnx").exists() and not (work / "m.pt").exists()


def test_command_line_subprocesses_exit_2_with_one_line(readers, work) -> None:
    good_npz = work / "good.npz"
    good_npz.write_bytes(readers["npz"].files["data.npz"])
    image = work / "kromp_crop.tif"
    image.write_bytes(readers["TIFF"].files["kromp_crop.tif"])
    text_model = work / "model.pt"
    text_model.write_text("this is not a model\n")
    truncated = work / "truncated.pt"
    model_bytes = readers["model .pt"].files["model.pt"]
    truncated.write_bytes(model_bytes[: len(model_bytes) // 3])
    text_data = work / "data.npz"
    text_data.write_text("Not a dataset\n")
    runs = {
        "segment": ["segment", "--model", str(text_model), str(image), "--out", str(work / "o")],
        "train": ["train", "--data", str(text_data), "--out", str(work / "m.pt")],
        "evaluate": ["evaluate", "--model", str(truncated), "--data", str(good_npz)],
        "export": ["export", "--model", str(text_model), "--format", "onnx", "--out", "x.onnx"],
    }
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command, args in runs.items():
        done = subprocess.run(
            [sys.executable, "-m", "napari_unet_nuclei.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=work,
            env=environment,
        )
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2, (command, done.stderr)
        assert len(err) == 1 and err[0].startswith(f"napari-unet-nuclei {command}: error:")
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert text_model.read_text() == "this is not a model\n"


# ----------------------------------------------------------------------------- batch
def test_batch_records_damaged_inputs_and_finishes_the_others(
    readers, work, kromp_tiny_model
) -> None:
    folder = work / "inputs"
    folder.mkdir()
    good = readers["TIFF"].files["kromp_crop.tif"]
    (folder / "a_good.tif").write_bytes(good)
    (folder / "b_truncated.tif").write_bytes(good[:100])
    (folder / "c_huge.tif").write_bytes(_tiff_claiming(good))
    (folder / "d_text.tif").write_text("this is not an image\n")
    (folder / "e_good.png").write_bytes(readers["PNG"].files["kromp_crop.png"])
    zarr_folder = folder / "f_damaged.ome.zarr"
    for name, data in readers["OME-Zarr"].files.items():
        path = zarr_folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    chunk = next(p for p in zarr_folder.rglob("*") if p.is_file() and p.name[0].isdigit())
    chunk.write_bytes(chunk.read_bytes()[:10])
    before = snapshot(folder)
    options = SegmentOptions(device="cpu", backend="torch", precision="fp32", tile_size=128)
    events = segment_files(kromp_tiny_model, [folder], work / "out", options)
    with time_limit(120):
        while True:
            try:
                next(events)
            except StopIteration as stop:
                rows = stop.value
                break
    status = {row["name"]: row["status"] for row in rows}
    assert status == {
        "a_good": "done",
        "b_truncated": "failed",
        "c_huge": "failed",
        "d_text": "failed",
        "e_good": "done",
        "f_damaged": "failed",
    }
    for row in rows:
        if row["status"] == "failed":
            assert row["error"] and "\n" not in row["error"] and "Traceback" not in row["error"]
    huge = next(row for row in rows if row["name"] == "c_huge")
    assert "100,000 x 100,000" in huge["error"]
    assert (work / "out" / "a_good.tif").is_file() and (work / "out" / "e_good.tif").is_file()
    summary = (work / "out" / "summary.csv").read_text()
    assert "b_truncated" in summary and "failed" in summary
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------- napari
@pytest.mark.gui
def test_bad_model_files_in_the_pickers(make_napari_viewer, readers, work, monkeypatch) -> None:
    from napari.utils import notifications

    from napari_unet_nuclei._napari import model_picker
    from napari_unet_nuclei._napari.model_picker import LOAD_FILE

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", shown.append)
    viewer = make_napari_viewer()
    train = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "Train")[1]
    segment = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "Segment")[1]
    model_bytes = readers["model .pt"].files["model.pt"]
    bad_files = {
        "this.pt": b"this is not a model\n",
        "Not.pt": b"Not a model either\n",
        "empty.pt": b"",
        "random.pt": np.random.default_rng(0).bytes(2048),
        "truncated.pt": model_bytes[: len(model_bytes) // 2],
        "flipped.pt": model_bytes[:100] + bytes([model_bytes[100] ^ 0xFF]) + model_bytes[101:],
        "image.pt": readers["TIFF"].files["kromp_crop.tif"],
        "data.pt": readers["npz"].files["data.npz"],
    }
    paths = []
    for name, data in bad_files.items():
        (work / name).write_bytes(data)
        paths.append(work / name)
    (work / "folder.pt").mkdir()
    paths.append(work / "folder.pt")
    picker = segment.model
    usable = picker.value
    assert usable is not LOAD_FILE
    for path in paths:
        monkeypatch.setattr(model_picker, "ask_model_path", lambda *_a, p=path, **_k: str(p))
        picker.value = LOAD_FILE  # "load file..." in the Segment picker
        assert picker.value == usable, f"the picker stayed on {picker.value!r} after {path.name}"
        assert shown[-1].startswith(f"Loading the model {path.name} failed:"), shown[-1]
        assert "\n" not in shown[-1] and "Traceback" not in shown[-1]
        count = len(shown)
        assert train.model_files.load_from(path) is None  # Train's Load model
        assert len(shown) == count + 1 and shown[-1].startswith(f"Loading the model {path.name}")
        if path.is_file():
            assert path.read_bytes() == bad_files[path.name]
    good = work / "good.pt"
    good.write_bytes(model_bytes)
    monkeypatch.setattr(model_picker, "ask_model_path", lambda *_a, **_k: str(good))
    picker.value = LOAD_FILE
    assert picker.value not in (usable, LOAD_FILE)  # a good file still loads afterwards
    assert train.model_files.load_from(good) is not None
