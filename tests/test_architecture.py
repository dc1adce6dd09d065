"""The package's shape: no import cycles, an engine and CLI that need neither Qt, napari
nor ONNX, and packaging that keeps the GUI in an extra."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import tifffile

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_unet_nuclei"
#: Top-level modules a plain ``pip install napari-unet-nuclei`` (no extras) does not bring.
GUI_AND_ONNX = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "npe2",
    "vispy",
    "onnx",
    "onnxruntime",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports, function-local imports included."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_read_correctly() -> None:
    graph = import_graph()
    assert "napari_unet_nuclei.io.model_errors" in graph["napari_unet_nuclei.io.model_io"]
    assert (
        "napari_unet_nuclei.console" in graph["napari_unet_nuclei.workflows.demo"]
    )  # a local import
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_in_a_cycle() -> None:
    assert cycles(import_graph()) == []


#: What each subpackage may import besides itself, lowest layer first (``events`` is the
#: shared vocabulary of progress events; ``notices`` the engine's sentences about the input,
#: below every layer; ``napari_unet_nuclei`` the root, for its version).
LAYERS = {
    "notices": set(),
    "nn": {"notices"},
    "io": {"nn", "notices"},
    "evaluate": {"nn", "notices"},
    "prediction": {"nn", "io", "events", "notices"},
    "train": {"nn", "io", "evaluate", "prediction", "events", "notices", "napari_unet_nuclei"},
    "data": {"nn", "io", "notices"},
    "project": {"nn", "io", "evaluate", "prediction", "train", "events", "notices"},
    "console": {"train", "events", "notices"},
    "workflows": {
        "nn",
        "io",
        "evaluate",
        "prediction",
        "train",
        "data",
        "project",
        "events",
        "notices",
        "console",
        "napari_unet_nuclei",
    },
    "_napari": {
        "nn",
        "io",
        "evaluate",
        "prediction",
        "train",
        "data",
        "project",
        "events",
        "notices",
        "workflows",
    },
}


def _layer(module: str) -> str:
    """``napari_unet_nuclei.train.losses`` -> ``train``; root modules are their own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_tests_are_laid_out_like_the_package() -> None:
    """Each folder of tests is a subpackage; at the top only the cross-cutting ones (the
    command line, the architecture, bad input and interrupted work across the engine)."""
    tests = Path(__file__).resolve().parent
    folders = {
        p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))
    }
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders <= subpackages, folders - subpackages
    top = {p.name for p in tests.glob("test_*.py")}
    assert top == {
        "test_architecture.py",
        "test_bad_input.py",
        "test_cli.py",
        "test_interrupted_work.py",
    }, top


def test_the_folders_show_the_architecture_and_lower_layers_never_import_higher() -> None:
    graph = import_graph()
    packages = {_layer(name) for name in graph if name.count(".") >= 2}
    assert packages == set(LAYERS) - {"console", "notices"}, packages
    for package in packages:
        init = PACKAGE / package / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring, f"{package}/__init__.py says in a line what the subpackage is for"
    for name, imported in graph.items():
        layer = _layer(name)
        if layer not in LAYERS:  # cli (the top) and events (imported by all)
            continue
        for other in imported:
            target = _layer(other)
            assert target == layer or target in LAYERS[layer], f"{name} imports {other}"


def test_the_engine_never_imports_the_gui() -> None:
    graph = import_graph()
    engine = [name for name in graph if "._napari" not in name]
    for name in engine:
        gui = sorted(other for other in graph[name] if "._napari" in other)
        assert not gui, f"{name} imports {gui}"


def test_gui_and_onnx_are_extras() -> None:
    requirements = metadata.requires("napari-unet-nuclei") or []
    plain = [r.split(";")[0] for r in requirements if "extra ==" not in r]
    names = {r.split("[")[0].split(">")[0].split("=")[0].strip().lower() for r in plain}
    assert names.isdisjoint(m.lower() for m in GUI_AND_ONNX), names
    napari_extra = {
        r.split(">")[0].strip() for r in requirements if r.replace('"', "'").endswith("'napari'")
    }
    assert {"napari", "magicgui", "qtpy", "superqt", "npe2"} <= napari_extra


def test_segment_and_evaluate_run_without_qt_napari_or_onnx(tmp_path, kromp_root) -> None:
    """As after ``pip install napari-unet-nuclei`` without extras: those imports fail."""
    names = ("normal_16", "Neuroblastoma_14")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for name in names:
        image = tifffile.imread(kromp_root / "images" / f"{name}.tif")[:256, :256]
        mask = tifffile.imread(kromp_root / "masks" / f"{name}.tif")[:256, :256]
        tifffile.imwrite(data / "images" / f"{name}.tif", image)
        tifffile.imwrite(data / "masks" / f"{name}.tif", mask.astype(np.uint16))
    script = textwrap.dedent(
        f"""
        import json, sys
        BLOCKED = {GUI_AND_ONNX!r}

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None

        sys.meta_path.insert(0, Blocker())
        from napari_unet_nuclei.cli import main
        codes = [
            main(["segment", {str(data / "images" / "normal_16.tif")!r}, "--out",
                  {str(tmp_path / "out")!r}, "--instances", "--measure"]),
            main(["evaluate", "--data", {str(data)!r}, "--json",
                  {str(tmp_path / "scores.json")!r}]),
        ]
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("RESULT", json.dumps({{"codes": codes, "loaded": loaded}}))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result == {"codes": [0, 0], "loaded": []}
    written = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert any(name.endswith(".csv") for name in written), written
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert 0.5 < scores["mean"]["f1"] <= 1.0, scores


def test_the_root_api_is_one_entry_per_job_each_with_its_streaming_twin() -> None:
    """Issue 23: load a model, train, predict, segment, evaluate, export; the rest lives in
    its module."""
    import napari_unet_nuclei as nun

    jobs = {
        "models": {"load_model", "save_model", "NucleiModel"},
        "train": {"TrainingConfig", "train_model", "iter_train"},
        "predict": {"predict", "iter_predict"},
        "segment": {
            "predict_instances",
            "iter_predict_instances",
            "segment_files",
            "SegmentOptions",
            "measure_nuclei",
        },
        "evaluate": {"evaluate_model", "iter_evaluate_model"},
        "export": {"export_model"},
        "data": {"load_dataset"},
    }
    assert set(nun.__all__) == {"__version__"}.union(*jobs.values())
    for name in nun.__all__[1:]:
        assert getattr(nun, name) is not None
    for streaming in (
        "iter_train",
        "iter_predict",
        "iter_predict_instances",
        "iter_evaluate_model",
    ):
        assert inspect.isgeneratorfunction(getattr(nun, streaming)), streaming
