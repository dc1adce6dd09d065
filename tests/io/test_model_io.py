"""Model files: round trip, refusal of code, damaged and foreign files, atomic save."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from napari_unet_nuclei.io.model_io import (
    FORMAT_VERSION,
    ModelFileError,
    load_model,
    model_to_dict,
    save_model,
)
from napari_unet_nuclei.nn.model import create_model
from napari_unet_nuclei.prediction.inference import predict


def test_save_load_gives_identical_outputs(tmp_path, lab_arrays) -> None:
    torch.manual_seed(3)
    model = create_model(features=4, depth=2, name="round trip")
    # Non-trivial BatchNorm statistics, as after training.
    with torch.no_grad():
        model.network.train()
        model.network(torch.rand(4, 1, 64, 64) * 3)
    model.network.eval()
    model.threshold = 0.4
    model.summary = {"train_names": ["a", "b"], "best_val_f1": 0.5, "history": [{"epoch": 1}]}
    path = save_model(model, tmp_path / "sub" / "m.pt")
    loaded = load_model(path)
    images = lab_arrays[0][:2, 0]
    np.testing.assert_array_equal(predict(model, images), predict(loaded, images))
    assert loaded.threshold == 0.4 and loaded.name == "round trip"
    assert loaded.summary["train_names"] == ["a", "b"]
    assert loaded.config == model.config
    assert not list(path.parent.glob("*.tmp"))


class _WritesSentinel:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_file_that_would_run_code_is_refused(tmp_path) -> None:
    sentinel = tmp_path / "sentinel.txt"
    data = model_to_dict(create_model(4, 2))
    data["summary"] = {"evil": _WritesSentinel(str(sentinel))}
    path = tmp_path / "evil.pt"
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="could run code"):
        load_model(path)
    assert not sentinel.exists()


def test_foreign_truncated_and_future_files(tmp_path) -> None:
    good = save_model(create_model(4, 2), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello, I am a text file")
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(text)
    weights_only = tmp_path / "state_dict.pt"
    torch.save(create_model(4, 2).network.state_dict(), weights_only)
    with pytest.raises(ModelFileError, match="not a napari-unet-nuclei model"):
        load_model(weights_only)
    future = model_to_dict(create_model(4, 2))
    future["format_version"] = FORMAT_VERSION + 1
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="newer than this plugin reads"):
        load_model(tmp_path / "future.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_plain_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "pickled.pt"
    with open(path, "wb") as stream:
        pickle.dump({"format": "napari-unet-nuclei-model"}, stream)
    with pytest.raises(ModelFileError):
        load_model(path)


def test_interrupted_save_keeps_old_file(tmp_path) -> None:
    """Kill a process in the middle of save_model: the previous file stays intact."""
    import subprocess
    import sys
    import textwrap

    target = tmp_path / "model.pt"
    save_model(create_model(4, 2, name="old"), target)
    before = target.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from napari_unet_nuclei.io import model_io
        from napari_unet_nuclei.nn.model import create_model
        real_save = torch.save
        def dying_save(obj, stream, *a, **k):
            real_save(obj, stream, *a, **k)
            stream.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # killed after writing, before the rename
        model_io.torch.save = dying_save
        model_io.save_model(create_model(8, 3, name="new"), {str(target)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=120
    )
    assert result.returncode == -9
    assert target.read_bytes() == before
    assert load_model(target).name == "old"
