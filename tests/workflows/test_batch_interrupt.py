"""A batch run killed with SIGKILL leaves only complete outputs; a re-run finishes the rest."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet_nuclei.cli import main
from napari_unet_nuclei.io.model_io import save_model

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"), reason="needs POSIX signals (SIGKILL)"
)

#: Three real images; the smallest sorts first, so the first output appears early.
NAMES = ("Ganglioneuroblastoma_9", "otherspecimen_3", "otherspecimen_9")


@pytest.fixture(scope="module")
def model_path(kromp_tiny_model, tmp_path_factory) -> str:
    """The tiny U-Net of conftest (F=4, depth 2, 40 steps on real crops) as a model file."""
    return str(save_model(kromp_tiny_model, tmp_path_factory.mktemp("model") / "tiny.pt"))


def _command() -> list[str]:
    """The installed ``napari-unet-nuclei`` script (run directly: its pid is Python's)."""
    script = Path(sys.executable).parent / "napari-unet-nuclei"
    if script.is_file():
        return [str(script)]
    found = shutil.which("napari-unet-nuclei")
    return [found] if found else [sys.executable, "-m", "napari_unet_nuclei.cli"]


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_sigkill_leaves_only_complete_outputs_and_rerun_finishes(
    model_path, kromp_root, tmp_path
) -> None:
    inputs = tmp_path / "images"
    inputs.mkdir()
    for name in NAMES:
        (inputs / f"{name}.tif").symlink_to(kromp_root / "images" / f"{name}.tif")
    arguments = ["segment", "--model", model_path, str(inputs), "--measure"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    # The uninterrupted run, for reference (one torch thread, as in the subprocesses).
    reference = tmp_path / "reference"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*arguments, "--out", str(reference)]) == 0
    finally:
        torch.set_num_threads(before)
    expected = {p.name: p for p in _visible(reference) if p.name != "summary.csv"}
    assert len(expected) == 2 * len(NAMES)  # <name>.tif and <name>_nuclei.csv each

    # Killed: as soon as the first mask exists, and preferably while a later image is
    # being written (its hidden temporary file exists).
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [*_command(), *arguments, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not any(p.suffix == ".tif" for p in _visible(out)):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no output within 180 s"
            time.sleep(0.005)
        first = [p.stem for p in _visible(out) if p.suffix == ".tif"]
        wait_for_write = time.monotonic() + 5
        while time.monotonic() < wait_for_write and process.poll() is None:
            if any(p.name.endswith(".partial") for p in _hidden(out)):
                break
            time.sleep(0.001)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()

    finished = [p.stem for p in _visible(out) if p.suffix == ".tif"]
    assert first and set(first) <= set(finished) and len(finished) < len(NAMES)
    # Every file under a final name is complete and equals the uninterrupted run's.
    for path in _visible(out):
        assert path.name in expected, path.name
        if path.suffix == ".tif":
            np.testing.assert_array_equal(
                tifffile.imread(path), tifffile.imread(expected[path.name])
            )
        else:
            assert path.read_bytes() == expected[path.name].read_bytes()
    # Only the hidden temporary files can be incomplete.
    assert all(p.name.endswith(".partial") for p in _hidden(out))
    print(f"killed after {finished}; temporary files left: {[p.name for p in _hidden(out)]}")

    # The re-run skips the finished images and completes the others.
    rerun = subprocess.run(
        [*_command(), *arguments, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    counts = re.search(r"(\d+) segmented, (\d+) skipped, (\d+) failed", rerun.stdout)
    assert counts is not None, rerun.stdout
    assert tuple(map(int, counts.groups())) == (
        len(NAMES) - len(finished),
        len(finished),
        0,
    )
    assert _hidden(out) == []
    assert [p.name for p in _visible(out)] == sorted([*expected, "summary.csv"])
    for name, path in expected.items():
        if path.suffix == ".tif":
            mask = tifffile.imread(out / name)
            np.testing.assert_array_equal(mask, tifffile.imread(path))
            assert mask.dtype == np.uint8 and 0.01 < mask.mean() < 0.9
        else:
            assert (out / name).read_bytes() == path.read_bytes()
