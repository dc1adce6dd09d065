"""Files crafted to run code, and damaged model files: refused with a sentence, nothing runs.

Each crafted file carries a ``__reduce__`` that writes a sentinel file when unpickled; the
tests first prove the payload works with plain ``pickle``/``numpy``/``torch`` loading, then
that the plugin's readers (datasets, napari reader, model files, command line in a
subprocess) refuse it and the sentinel never appears. The napari GUI paths are in
``test_bad_input_widgets.py``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet_nuclei._napari.reader import get_reader, read_lab_file
from napari_unet_nuclei.cli import main
from napari_unet_nuclei.io.datasets import load_dataset
from napari_unet_nuclei.io.labelled import DataError, RefusedFileError
from napari_unet_nuclei.io.model_io import ModelFileError, load_model, model_to_dict, save_model
from napari_unet_nuclei.io.safe_pickle import UnsafeFileError, load_tensor_pickle
from napari_unet_nuclei.nn.model import create_model


class WritesSentinel:
    """Unpickling this object calls ``Path.write_text(target, "pwned")``: it runs code."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


def crafted_files(folder: Path, sentinel: Path) -> dict[str, Path]:
    """Every kind of crafted file, each of which runs the payload with a naive loader."""
    evil = WritesSentinel(sentinel)
    x = torch.rand(2, 1, 16, 16)
    files = {}
    files["pck"] = folder / "evil.pck"
    files["pck"].write_bytes(pickle.dumps((x, evil), protocol=4))
    files["pck_torch_zip"] = folder / "evil_zip.pck"
    torch.save((x, evil), files["pck_torch_zip"])
    files["npz"] = folder / "evil.npz"
    np.savez(files["npz"], X=np.array([evil, 1], dtype=object), Y=np.zeros((2, 16, 16)))
    model = model_to_dict(create_model(4, 2))
    model["summary"] = {"note": evil}
    files["pt"] = folder / "evil.pt"
    torch.save(model, files["pt"])
    files["pt_legacy"] = folder / "evil_legacy.pt"
    torch.save(model, files["pt_legacy"], _use_new_zipfile_serialization=False)
    files["pt_pickle"] = folder / "evil_pickle.pt"
    files["pt_pickle"].write_bytes(pickle.dumps(model))
    return files


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[dict[str, Path], Path]:
    sentinel = tmp_path / "sentinel.txt"
    return crafted_files(tmp_path, sentinel), sentinel


def test_the_payloads_really_run_code_with_naive_loaders(crafted, tmp_path: Path) -> None:
    files, sentinel = crafted
    loaders = {
        "pck": lambda p: pickle.loads(p.read_bytes()),
        "pck_torch_zip": lambda p: torch.load(p, weights_only=False),
        "npz": lambda p: np.load(p, allow_pickle=True)["X"],
        "pt": lambda p: torch.load(p, weights_only=False),
        "pt_legacy": lambda p: torch.load(p, weights_only=False),
        "pt_pickle": lambda p: pickle.loads(p.read_bytes()),
    }
    for kind, load in loaders.items():
        sentinel.unlink(missing_ok=True)
        load(files[kind])
        assert sentinel.read_text() == "pwned", kind
    sentinel.unlink()


def test_datasets_and_safe_pickle_refuse_crafted_data(crafted) -> None:
    files, sentinel = crafted
    for kind in ("pck", "pck_torch_zip"):
        with pytest.raises(UnsafeFileError, match=r"(NOT|not) loaded"):
            load_dataset(files[kind])
        with pytest.raises(UnsafeFileError):
            load_tensor_pickle(files[kind])
    with pytest.raises(RefusedFileError, match=r"object arrays.*pickle can run code") as info:
        load_dataset(files["npz"])
    assert isinstance(info.value, DataError) and isinstance(info.value, UnsafeFileError)
    assert not sentinel.exists()


def test_napari_reader_refuses_crafted_data(crafted) -> None:
    files, sentinel = crafted
    for kind in ("pck", "pck_torch_zip", "npz"):
        reader = get_reader(str(files[kind]))
        assert reader is read_lab_file  # claimed by extension and layout...
        with pytest.raises(UnsafeFileError, match=f"refused to open {files[kind].name}"):
            reader(str(files[kind]))  # ...then refused before anything runs
    assert not sentinel.exists()


def test_model_files_that_would_run_code_are_refused(crafted) -> None:
    files, sentinel = crafted
    for kind in ("pt", "pt_legacy", "pt_pickle"):
        with pytest.raises(ModelFileError, match="could run code"):
            load_model(files[kind])
    assert not sentinel.exists()


def test_cli_refuses_crafted_files_in_process(crafted, lab_npz, tmp_path, capsys) -> None:
    files, sentinel = crafted
    good_model = save_model(create_model(4, 2), tmp_path / "good.pt")
    cases = [
        (["train", "--data", files["npz"], "--out", tmp_path / "m.pt"], "object arrays"),
        (["train", "--data", files["pck_torch_zip"], "--out", tmp_path / "m.pt"], "Refused"),
        (
            ["train", "--data", lab_npz, "--init", files["pt_legacy"], "--out", tmp_path / "m.pt"],
            "could run code",
        ),
        (["evaluate", "--model", files["pt"], "--data", lab_npz], "could run code"),
        (
            ["export", "--model", files["pt_pickle"], "--format", "onnx", "--out", tmp_path / "x"],
            "could run code",
        ),
        (["evaluate", "--model", good_model, "--data", files["pck"]], "Refused"),
    ]
    for args, expected in cases:
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (args, err)
        assert "Traceback" not in err[0]
    assert not sentinel.exists() and not (tmp_path / "m.pt").exists()


def test_cli_subprocess_refuses_crafted_files(crafted, tmp_path) -> None:
    """The installed command, in its own process: exit status 2, one sentence, no code run."""
    files, sentinel = crafted
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "napari_unet_nuclei.cli"]
    runs = [
        subprocess.Popen(
            [*command, "train", "--data", str(files["pck"]), "--out", str(tmp_path / "m.pt")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [
                *command,
                "segment",
                "--model",
                str(files["pt"]),
                str(files["pck"]),
                "--out",
                str(tmp_path / "out"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    results = [(*run.communicate(timeout=120), run.returncode) for run in runs]
    (_, train_err, train_status), (_, segment_err, segment_status) = results
    assert train_status == 2 and "Refused to load" in train_err
    assert "pathlib.Path.write_text" in train_err and "Traceback" not in train_err
    assert segment_status == 2 and "could run code" in segment_err
    assert "Traceback" not in segment_err
    assert not sentinel.exists() and not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------- damaged model files
@pytest.fixture(scope="module")
def good_model_bytes(tmp_path_factory) -> tuple[bytes, dict]:
    torch.manual_seed(1)
    model = create_model(4, 2, name="good")
    path = save_model(model, tmp_path_factory.mktemp("good") / "good.pt")
    return path.read_bytes(), model.network.state_dict()


def test_corrupted_weights_are_detected(good_model_bytes, tmp_path) -> None:
    raw, state = good_model_bytes
    biggest = max(state.values(), key=lambda t: t.numel())
    offset = raw.find(biggest.numpy().tobytes())
    assert offset > 0
    damaged = bytearray(raw)
    damaged[offset + 101] ^= 0x40  # one flipped bit inside a weight: still a valid zip
    path = tmp_path / "bitflip.pt"
    path.write_bytes(bytes(damaged))
    with pytest.raises(ModelFileError, match="is damaged: its weights do not match the checksum"):
        load_model(path)


def test_random_corruption_never_crashes_nor_loads_wrong_weights(good_model_bytes, tmp_path):
    raw, state = good_model_bytes
    rng = np.random.default_rng(6)
    path = tmp_path / "random.pt"
    outcomes = {"refused": 0, "identical": 0}
    for position in rng.choice(len(raw), 60, replace=False):
        damaged = bytearray(raw)
        damaged[position] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        try:
            loaded = load_model(path)
        except ModelFileError as error:
            assert str(error).startswith(str(path)) and "\n" not in str(error)
            outcomes["refused"] += 1
            continue
        # Bytes the loader never reads (zip comments, padding): the weights are intact.
        for key, value in loaded.network.state_dict().items():
            assert torch.equal(value, state[key]), key
        outcomes["identical"] += 1
    assert outcomes["refused"] >= 20, outcomes


def test_other_kinds_of_files_renamed_pt(tmp_path, lab_npz, kromp_root, capsys) -> None:
    cases = {
        "empty.pt": b"",
        "image.pt": (kromp_root / "images").glob("*.tif").__next__().read_bytes()[:50_000],
        "data.pt": lab_npz.read_bytes(),  # a zip archive, but numpy's
        "random.pt": np.random.default_rng(0).bytes(4096),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match="not a readable model file"):
            load_model(tmp_path / name)
    archive = tmp_path / "zip.pt"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("archive/data.pkl", b"garbage")
    with pytest.raises(ModelFileError):
        load_model(archive)
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="Model file not found"):
        load_model(folder)
    assert (
        main(
            [
                "segment",
                "--model",
                str(tmp_path / "data.pt"),
                str(lab_npz),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable model file" in err[0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"format_version": 99}, "newer than this plugin reads"),
        ({"format_version": "1"}, "model format version 1, newer"),
        ({"format": "someone-else"}, "not a napari-unet-nuclei model"),
        ({"architecture": {"features": "many"}}, "damaged or incomplete"),
        ({"state_dict": {}}, "damaged"),
    ],
)
def test_future_and_inconsistent_model_files(change, expected, tmp_path, capsys) -> None:
    data = {**model_to_dict(create_model(4, 2)), **change}
    if "state_dict" in change:
        data.pop("weights_sha256")
    path = tmp_path / "odd.pt"
    torch.save(data, path)
    with pytest.raises(ModelFileError, match=expected):
        load_model(path)
    assert main(["evaluate", "--model", str(path), "--data", "x.npz"]) == 2
    assert expected in capsys.readouterr().err
