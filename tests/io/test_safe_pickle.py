"""The restricted pickle reader: the lab's file loads, code-running pickles never run."""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet_nuclei.io.safe_pickle import UnsafeFileError, load_tensor_pickle


def test_lab_pickle_equals_npz(lab_pickle: Path, lab_arrays) -> None:
    arrays = load_tensor_pickle(lab_pickle)
    assert len(arrays) == 2
    X, Y = arrays
    for array in (X, Y):
        assert isinstance(array, np.ndarray)
        assert array.dtype == np.float32
        assert array.shape == (79, 1, 128, 128)
    npz_x, npz_y, _names = lab_arrays
    np.testing.assert_array_equal(X, npz_x)
    np.testing.assert_array_equal(Y, npz_y)
    assert set(np.unique(Y)) == {0.0, 1.0}


class _WritesSentinel:
    """Unpickling this object would call ``Path.write_text`` (i.e. run code)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


class _RunsSystem:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Exec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (builtins.exec, (self.code,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reduce_payload_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    sentinel = tmp_path / "sentinel.txt"
    bad = tmp_path / "bad.pck"
    bad.write_bytes(pickle.dumps(_WritesSentinel(sentinel), protocol=protocol))
    # The payload really works with plain pickle (checked on a different target).
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_WritesSentinel(control), protocol=protocol))
    assert control.read_text() == "pwned"

    with pytest.raises(UnsafeFileError, match=r"write_text|getattr"):
        load_tensor_pickle(bad)
    assert not sentinel.exists()


def test_os_system_and_exec_are_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "touched"
    for payload, expected in (
        (_RunsSystem(f"touch {sentinel}"), r"(posix|nt|os)\.system"),
        (_Exec(f"open({str(sentinel)!r}, 'w').write('x')"), r"builtins\.exec"),
    ):
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(pickle.dumps(payload))
        with pytest.raises(UnsafeFileError, match=expected) as info:
            load_tensor_pickle(bad)
        assert "not loaded" in str(info.value).lower()
    assert not sentinel.exists()


def test_disallowed_class_next_to_tensors_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel.txt"
    X = torch.rand(3, 1, 8, 8)
    Y = (torch.rand(3, 1, 8, 8) > 0.5).float()
    bad = tmp_path / "mixed.pck"
    with open(bad, "wb") as handle:
        pickle.dump((X, Y, (1, [_WritesSentinel(sentinel)])), handle)
    with pytest.raises(UnsafeFileError, match="write_text"):
        load_tensor_pickle(bad)
    assert not sentinel.exists()


def test_plain_tensor_and_array_pickles(tmp_path: Path) -> None:
    X = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    Y = np.arange(6, dtype=np.uint16).reshape(2, 3)
    for protocol in (2, 5):
        path = tmp_path / f"ok{protocol}.pck"
        path.write_bytes(pickle.dumps([X, Y], protocol=protocol))
        got_x, got_y = load_tensor_pickle(path)
        np.testing.assert_array_equal(got_x, X.numpy())
        assert got_y.dtype == np.uint16
        np.testing.assert_array_equal(got_y, Y)
    single = tmp_path / "single.pck"
    single.write_bytes(pickle.dumps(X[0, 1:]))  # a view with an offset into the storage
    (only,) = load_tensor_pickle(single)
    np.testing.assert_array_equal(only, X[0, 1:].numpy())


def test_torch_save_file_is_read_safely(tmp_path: Path) -> None:
    path = tmp_path / "saved.pt"
    torch.save((torch.ones(2, 2), torch.zeros(3)), path)
    ones, zeros = load_tensor_pickle(path)
    np.testing.assert_array_equal(ones, np.ones((2, 2), np.float32))
    assert zeros.shape == (3,)


def test_non_tensor_content_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "dict.pck"
    path.write_bytes(pickle.dumps({"X": 1}))
    with pytest.raises(ValueError, match="tensor or array"):
        load_tensor_pickle(path)
    garbage = tmp_path / "garbage.pck"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="pickle"):
        load_tensor_pickle(garbage)
