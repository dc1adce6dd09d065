"""Export to TorchScript, ONNX and bioimage.io, on a model trained briefly on real images."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_unet_nuclei.cli import main
from napari_unet_nuclei.io.bioimageio_package import BioimageioPackageError, import_bioimageio
from napari_unet_nuclei.io.datasets import load_dataset, parse_split, select_by_names
from napari_unet_nuclei.io.model_io import ModelFileError, load_model, save_model
from napari_unet_nuclei.nn.normalization import normalize_frame
from napari_unet_nuclei.prediction.inference import predict
from napari_unet_nuclei.train.augmentation import AugmentationConfig
from napari_unet_nuclei.train.training import TrainingConfig, train_model
from napari_unet_nuclei.workflows.bioimageio_export import export_bioimageio, validate_bioimageio
from napari_unet_nuclei.workflows.export import export_model
from napari_unet_nuclei.workflows.network_export import (
    ExportError,
    export_onnx,
    export_torchscript,
    portable_network,
)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("bioimageio.spec")


@pytest.fixture(scope="module")
def lab_items(lab_npz, kromp_root):
    items = load_dataset(lab_npz)
    train_names, test_names = parse_split(f"{kromp_root / 'splits.json'}:lab_70_9")
    return select_by_names(items, train_names), select_by_names(items, test_names)


@pytest.fixture(scope="module")
def model(lab_items):
    """A tiny U-Net trained for a few steps, so BatchNorm statistics are not the defaults."""
    train_items, test_items = lab_items
    config = TrainingConfig(
        features=4,
        depth=2,
        epochs=1,
        steps_per_epoch=6,
        batch_size=4,
        patch_size=64,
        augmentation=AugmentationConfig.disabled(),
        seed=0,
        device="cpu",
    )
    trained = train_model(
        [i.image for i in train_items],
        [i.labels for i in train_items],
        config,
        val_images=[i.image for i in test_items[:3]],
        val_labels=[i.labels for i in test_items[:3]],
    )
    bn = trained.network.encoder[0].block[2]
    assert float(bn.running_mean.abs().sum()) > 0 and not torch.allclose(
        bn.running_var, torch.ones_like(bn.running_var)
    )
    return trained


@pytest.fixture(scope="module")
def real_inputs(model, lab_items, kromp_root) -> list[np.ndarray]:
    """Normalised real images: a batch of two 128x128 lab images and a 203x150 crop of a
    full-resolution image (not a multiple of 2**depth)."""
    _, test_items = lab_items
    small = np.stack([normalize_frame(i.image, model.normalization) for i in test_items[:2]])[
        :, None
    ]
    full = tifffile.imread(kromp_root / "images" / f"{test_items[0].name}.tif")
    crop = normalize_frame(full[300:503, 400:550], model.normalization)[None, None]
    return [small, np.ascontiguousarray(crop)]


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.network.eval()(torch.from_numpy(x)).numpy()


def test_portable_network_is_the_same_network(model, real_inputs) -> None:
    network = portable_network(model)
    for x in real_inputs:
        with torch.no_grad():
            ours = network(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, _torch_logits(model, x), atol=1e-6)


def test_onnx_matches_pytorch_under_onnxruntime(model, real_inputs, tmp_path) -> None:
    path = export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (tensor_in,), (tensor_out,) = session.get_inputs(), session.get_outputs()
    assert (tensor_in.name, tensor_out.name) == ("input", "logits")
    assert tensor_in.shape[0] == "batch" and tensor_in.shape[2:] == ["height", "width"]
    for x in real_inputs:
        (logits,) = session.run(None, {"input": x})
        assert logits.shape == (x.shape[0], 1, *x.shape[2:])
        np.testing.assert_allclose(logits, _torch_logits(model, x), atol=1e-4, rtol=0)
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["napari_unet_nuclei.format"] == "napari-unet-nuclei-model"
    assert "99.8" in metadata["napari_unet_nuclei.nn.normalization"]


def test_torchscript_matches_pytorch(model, real_inputs, tmp_path) -> None:
    path = export_torchscript(model, tmp_path / "model.pt")
    with pytest.warns(DeprecationWarning):  # torch 2.13 deprecates TorchScript, still loads it
        scripted = torch.jit.load(str(path))
    for x in real_inputs:
        with torch.no_grad():
            logits = scripted(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(logits, _torch_logits(model, x), atol=1e-5, rtol=0)
    # A TorchScript file is not a model file of ours, and loading it as one says so.
    with (
        pytest.warns(UserWarning, match="TorchScript"),
        pytest.raises(ModelFileError, match="another kind of file"),
    ):
        load_model(path)


@pytest.fixture(scope="module")
def package(model, lab_items, tmp_path_factory) -> Path:
    _, test_items = lab_items
    return export_bioimageio(
        model, tmp_path_factory.mktemp("bioimageio") / "nuclei.zip", test_image=test_items[0].image
    )


def test_bioimageio_package_passes_the_spec_validator(package) -> None:
    descr = validate_bioimageio(package)  # perform_io_checks: hashes, test tensors, cover
    assert str(descr.format_version).startswith("0.5")
    assert descr.validation_summary.status in ("passed", "valid-format")
    assert descr.weights.pytorch_state_dict.architecture.callable == "PortableUNet"
    assert descr.weights.torchscript is not None and descr.weights.onnx is not None
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert {"README.md", "cover.png", "portable_unet.py", "test_input.npy"} <= names
    (step,) = [p for p in rdf["inputs"][0]["preprocessing"] if p["id"] == "scale_range"]
    assert step["kwargs"] == {
        "axes": ["y", "x"],
        "min_percentile": 1.0,
        "max_percentile": 99.8,
    }
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "sigmoid"


def test_bioimageio_preprocessing_equals_our_normalisation(package, model) -> None:
    """scale_range as bioimage.io defines it gives our normalisation, and the package's
    test output is our prediction of its test input."""
    with zipfile.ZipFile(package) as archive:
        raw = np.load(io.BytesIO(archive.read("test_input.npy")))[0, 0]
        expected = np.load(io.BytesIO(archive.read("test_output.npy")))[0, 0]
    low, high = np.percentile(raw, [1.0, 99.8])
    scale_range = (raw - low) / (high - low + 1e-6)
    np.testing.assert_allclose(scale_range, normalize_frame(raw, model.normalization), atol=1e-5)
    with torch.no_grad():
        logits = portable_network(model)(torch.from_numpy(scale_range[None, None]).float())
    np.testing.assert_allclose(torch.sigmoid(logits)[0, 0].numpy(), expected, atol=1e-5)


def test_bioimageio_import_round_trip(package, model, lab_items) -> None:
    imported = import_bioimageio(package)
    assert imported.config == model.config
    assert imported.normalization == model.normalization
    assert imported.threshold == model.threshold
    assert imported.summary["train_names"] == model.summary["train_names"]
    _, test_items = lab_items
    for item in test_items[:3]:
        np.testing.assert_array_equal(predict(imported, item.image), predict(model, item.image))


def test_tampered_package_is_refused(package, tmp_path) -> None:
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "weights.pt":
                data = data[:-100] + bytes(100)
            target.writestr(info, data)
    with pytest.raises(ExportError, match=r"not a valid bioimage\.io package"):
        validate_bioimageio(tampered)
    with pytest.raises(BioimageioPackageError, match="SHA-256"):
        import_bioimageio(tampered)


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


class _Payload:
    """Stands for code hidden in a pickle: unpickling it would create a folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_foreign_or_invalid_packages_are_refused(package, tmp_path) -> None:
    foreign = {"type": "model", "name": "someone else's model", "format_version": "0.5.4"}
    with pytest.raises(BioimageioPackageError, match="another tool"):
        import_bioimageio(_zip(tmp_path / "foreign.zip", {"rdf.yaml": yaml.safe_dump(foreign)}))
    with pytest.raises(BioimageioPackageError, match=r"no rdf\.yaml"):
        import_bioimageio(_zip(tmp_path / "empty.zip", {"readme.txt": b"hello"}))
    with pytest.raises(BioimageioPackageError, match="not a zip file"):
        (tmp_path / "text.zip").write_text("not a zip")
        import_bioimageio(tmp_path / "text.zip")
    with pytest.raises(FileNotFoundError):
        import_bioimageio(tmp_path / "missing.zip")

    # Our own description with weights that hold a pickled object: refused, never run.
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    stream = io.BytesIO()
    marker = tmp_path / "payload-ran"
    torch.save({"encoder.0.block.0.weight": _Payload(marker)}, stream)
    weights = stream.getvalue()
    rdf["weights"]["pytorch_state_dict"]["sha256"] = hashlib.sha256(weights).hexdigest()
    evil = _zip(tmp_path / "evil.zip", {"rdf.yaml": yaml.safe_dump(rdf), "weights.pt": weights})
    with pytest.raises(BioimageioPackageError, match="could run code"):
        import_bioimageio(evil)
    assert not marker.exists()


def test_import_reads_an_unpacked_folder(package, tmp_path, model) -> None:
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    imported = import_bioimageio(folder / "rdf.yaml")
    for key, value in model.network.state_dict().items():
        assert torch.equal(imported.network.state_dict()[key], value)


def test_cli_export_round_trip(model, lab_items, tmp_path, capsys) -> None:
    model_file = save_model(model, tmp_path / "model.pt")
    out = tmp_path / "exported.zip"
    code = main(
        ["export", "--model", str(model_file), "--format", "bioimageio", "--out", str(out)]
    )
    assert code == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out
    validate_bioimageio(out)
    _, test_items = lab_items
    image = test_items[1].image
    np.testing.assert_array_equal(predict(import_bioimageio(out), image), predict(model, image))

    onnx_file = tmp_path / "exported.onnx"
    assert (
        main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(onnx_file)])
        == 0
    )
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = normalize_frame(image, model.normalization)[None, None]
    np.testing.assert_allclose(
        session.run(None, {"input": x})[0], _torch_logits(model, x), atol=1e-4, rtol=0
    )


def test_cli_export_errors(tmp_path, capsys) -> None:
    missing = ["--model", str(tmp_path / "none.pt"), "--format", "onnx", "--out", "x.onnx"]
    assert main(["export", *missing]) == 2
    assert "not found" in capsys.readouterr().err
    not_a_model = tmp_path / "bad.pt"
    not_a_model.write_bytes(b"garbage")
    args = ["--model", str(not_a_model), "--format", "torchscript", "--out", "x.pt"]
    assert main(["export", *args]) == 2
    with pytest.raises(SystemExit):
        main(["export", "--model", "m.pt", "--format", "keras", "--out", "x"])


def test_export_model_dispatch(model, tmp_path) -> None:
    with pytest.raises(ValueError, match="Unknown export format"):
        export_model(model, tmp_path / "x", "tensorflow")
    path = export_model(model, tmp_path / "net.onnx", "onnx", opset=13)
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))


def test_invalid_description_is_an_export_error(model, tmp_path) -> None:
    target = tmp_path / "bad.zip"
    with pytest.raises(ExportError, match="Invalid bioimage"):
        export_bioimageio(model, target, license="no-such-licence", weights=())
    assert list(tmp_path.iterdir()) == []


def test_helper_process_export_is_the_export_of_this_process(model, tmp_path) -> None:
    """The helper (the command line's export, fed a model file) writes the same ONNX graph
    and a bioimage.io package with the same weights and description as this process."""
    import threading

    from napari_unet_nuclei.workflows.export import export_in_helper_process

    here = export_model(model, tmp_path / "here.onnx", "onnx")
    helper = export_in_helper_process(model, tmp_path / "helper.onnx", "onnx")
    assert helper == tmp_path / "helper.onnx" and helper.read_bytes() == here.read_bytes()

    package = export_in_helper_process(
        model, tmp_path / "helper.zip", "bioimageio", stop=threading.Event()
    )
    assert validate_bioimageio(package).validation_summary.status in ("passed", "valid-format")
    imported = import_bioimageio(package)
    for a, b in zip(model.network.parameters(), imported.network.parameters()):
        assert torch.equal(a, b)
    assert imported.threshold == model.threshold


def test_stopped_helper_export_writes_nothing(model, tmp_path) -> None:
    import threading

    from napari_unet_nuclei.workflows.export import ExportCancelled, export_in_helper_process

    stop = threading.Event()
    stop.set()
    with pytest.raises(ExportCancelled, match="was stopped"):
        export_in_helper_process(model, tmp_path / "stopped.zip", "bioimageio", stop=stop)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="Unknown export format"):
        export_in_helper_process(model, tmp_path / "x", "tensorflow")
