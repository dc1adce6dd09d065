"""The ONNX export: in a helper process off the main thread, the same graph either way."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch

from napari_unet_nuclei.io.model_io import load_model
from napari_unet_nuclei.nn import onnx_export
from napari_unet_nuclei.nn.acceleration import onnxruntime_available

pytestmark = pytest.mark.skipif(
    not onnxruntime_available(), reason="onnx/onnxruntime not installed"
)


def _in_a_thread(call):
    """``call()`` run in a (non-main) thread, as napari's and dask's workers run it."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("value", call()))
    thread.start()
    thread.join()
    return outcome["value"]


@pytest.fixture(scope="module")
def builtin_network() -> torch.nn.Module:
    return load_model("fluo-nuclei").network


def test_a_worker_thread_exports_in_a_helper_that_gives_the_same_graph(
    builtin_network, tmp_path
) -> None:
    """The helper's graph is byte for byte the one exported here, and a process whose
    worker thread exported never imports ``onnx`` (its import would freeze the window)."""
    here = onnx_export.export_in_this_process(builtin_network)
    assert len(here) > 100_000
    assert _in_a_thread(lambda: onnx_export.export_in_helper_process(builtin_network)) == here
    (tmp_path / "graph.onnx").write_bytes(here)
    script = (
        "import sys, threading\n"
        "from napari_unet_nuclei.io.model_io import load_model\n"
        "from napari_unet_nuclei.nn.onnx_export import export_graph\n"
        "network = load_model('fluo-nuclei').network\n"
        "out = {}\n"
        "worker = threading.Thread(target=lambda: out.update(graph=export_graph(network)))\n"
        "worker.start(); worker.join()\n"
        f"same = out['graph'] == open({str(tmp_path / 'graph.onnx')!r}, 'rb').read()\n"
        "print('same graph:', same, 'onnx imported:', 'onnx' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "same graph: True onnx imported: False" in run.stdout


def test_without_a_helper_the_graph_is_exported_here(builtin_network, monkeypatch) -> None:
    here = onnx_export.export_in_this_process(builtin_network)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(RuntimeError, match="did not run"):
        onnx_export.export_in_helper_process(builtin_network)
    assert _in_a_thread(lambda: onnx_export.export_graph(builtin_network)) == here


def test_a_failing_helper_says_why(builtin_network, monkeypatch) -> None:
    """A helper that cannot read the weights (here: a network whose weights do not fit the
    architecture it claims) fails with its last line, and the caller exports here."""
    monkeypatch.setattr(onnx_export, "_architecture", lambda network: (8, 2, 1, 1))
    with pytest.raises(RuntimeError, match="helper failed: size mismatch"):
        onnx_export.export_in_helper_process(builtin_network)
