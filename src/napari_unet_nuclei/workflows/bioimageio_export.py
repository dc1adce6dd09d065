"""bioimage.io model packages: the zip with weights in three formats, the architecture,
pre- and post-processing, a test input/output pair, a cover and a README, checked with
bioimageio.spec's own validator before it is kept (read back by
:mod:`napari_unet_nuclei.io.bioimageio_package`)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet_nuclei import __version__
from napari_unet_nuclei.io.bioimageio_package import CONFIG_KEY
from napari_unet_nuclei.io.file_writing import atomic_path
from napari_unet_nuclei.io.model_io import FORMAT_NAME, FORMAT_VERSION, plain_data
from napari_unet_nuclei.nn.normalization import normalize_frame
from napari_unet_nuclei.prediction.inference import predict
from napari_unet_nuclei.workflows.network_export import (
    ExportError,
    export_onnx,
    export_torchscript,
    portable_network,
)

if TYPE_CHECKING:
    from napari_unet_nuclei.nn.model import NucleiModel

__all__ = ["export_bioimageio", "validate_bioimageio"]

#: Name of the architecture file inside a bioimage.io package.
ARCHITECTURE_FILE = "portable_unet.py"

_CITATIONS = (
    (
        "Ronneberger, Fischer & Brox (2015). U-Net: Convolutional Networks for Biomedical "
        "Image Segmentation. MICCAI.",
        "10.1007/978-3-319-24574-4_28",
    ),
    (
        "Kromp et al. (2020). An annotated fluorescence image dataset for training nuclear "
        "segmentation methods. Scientific Data 7:262.",
        "10.1038/s41597-020-00608-w",
    ),
)


def _require_bioimageio_spec() -> Any:
    try:
        import bioimageio.spec
    except ImportError as error:
        raise ExportError(
            "bioimage.io export needs the bioimageio.spec package: "
            'pip install "napari-unet-nuclei[export]".'
        ) from error
    return bioimageio.spec


def _yaml_safe(value: Any) -> Any:
    """Plain YAML data: NaN and infinities become None, numpy scalars Python numbers."""
    value = plain_data(value)
    if isinstance(value, dict):
        return {k: _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _test_image(model: NucleiModel, image: np.ndarray | None) -> np.ndarray:
    """A 2-D float32 test image, at most 256 x 256 and cropped to a multiple of 2**depth."""
    if image is None:
        from napari_unet_nuclei.data.sample_data import make_synthetic_nuclei

        image, _ = make_synthetic_nuclei((128, 128), seed=0)
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"test_image must be a 2-D image, got shape {image.shape}.")
    multiple = model.config.size_multiple
    height = min(image.shape[0], 256) // multiple * multiple
    width = min(image.shape[1], 256) // multiple * multiple
    if height < multiple or width < multiple:
        raise ValueError(
            f"test_image of shape {image.shape} is smaller than the network's size multiple "
            f"{multiple}; give a larger image."
        )
    return np.ascontiguousarray(image[:height, :width], dtype=np.float32)


def _write_cover(path: Path, image: np.ndarray, probabilities: np.ndarray, title: str) -> None:
    """Image | nucleus probability side by side, 2:1 as bioimage.io recommends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    axes[0].imshow(np.clip(normalize_frame(image), 0, 1), cmap="gray")
    axes[0].set_title("input")
    axes[1].imshow(probabilities, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("nucleus probability")
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)


def _readme(model: NucleiModel, name: str) -> str:
    cfg, norm, summary = model.config, model.normalization, model.summary

    def number(key: str) -> str:
        value = summary.get(key)
        return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"

    train_names = summary.get("train_names") or []
    val_names = summary.get("val_names") or []
    return f"""# {name}

U-Net for **binary cell-nuclei segmentation in 2-D fluorescence images** (DAPI/Hoechst),
trained and exported with napari-unet-nuclei {_version()}.

## Network

The U-Net of the classic nuclei lab: block = (conv 3x3 -> ReLU -> BatchNorm) x 2, max-pool
encoder, `ConvTranspose2d(kernel 2, stride 2)` decoder with skip connections, 1x1 output
convolution. Width F = {cfg.features}, depth = {cfg.depth} (height and width are padded by
reflection to a multiple of {cfg.size_multiple} inside the network and cropped back, so any
size of at least {cfg.size_multiple} x {cfg.size_multiple} works).

## Input and output

- input `raw`: one grey image, axes `batch, channel, y, x`, float32.
- pre-processing `scale_range` over `y, x` of each image: the {norm.low_percentile:g}th
  percentile maps to 0 and the {norm.high_percentile:g}th to 1 (the plugin's normalisation).
- output `probability`: nucleus probability per pixel after a `sigmoid`; the suggested
  threshold is {model.threshold:g}.

## Training

- data: {len(train_names)} training images, validated on {len(val_names)} images (their
  names are in `rdf.yaml` under `config.napari_unet_nuclei.summary`).
- epochs {summary.get("epochs", "n/a")}, steps {summary.get("steps", "n/a")}, best epoch
  {summary.get("best_epoch", "n/a")}.

## Validation

Pixel scores at threshold {model.threshold:g} on the validation images (per-image mean)
when the model was trained: precision {number("best_val_precision")}, recall
{number("best_val_recall")}, F1 (Dice) {number("best_val_f1")}, IoU {number("best_val_iou")}.
Check the model on your own annotated images before relying on it: with napari-unet-nuclei,
`napari-unet-nuclei evaluate --model MODEL.pt --data FOLDER` gives precision, recall, F1,
IoU and average precision per image.

## Use with napari-unet-nuclei

```python
from napari_unet_nuclei.io.bioimageio_package import import_bioimageio
model = import_bioimageio("this-package.zip")
```
"""


def _version() -> str:

    return __version__


def _model_description(
    model: NucleiModel,
    *,
    name: str,
    description: str,
    authors: Sequence[str],
    license: str,
    weights: Sequence[str],
    cover_name: str,
) -> Any:
    """Build the bioimage.io model description of the files written in the current root."""
    import torch
    from bioimageio.spec.model import v0_5 as bio

    cfg, norm = model.config, model.normalization
    torch_version = bio.Version(torch.__version__.split("+")[0])
    multiple = cfg.size_multiple
    raw, prob = bio.TensorId("raw"), bio.TensorId("probability")

    def space_in(axis: str) -> Any:
        return bio.SpaceInputAxis(
            id=bio.AxisId(axis), size=bio.ParameterizedSize(min=multiple, step=1)
        )

    def space_out(axis: str) -> Any:
        return bio.SpaceOutputAxis(
            id=bio.AxisId(axis),
            size=bio.SizeReference(tensor_id=raw, axis_id=bio.AxisId(axis)),
        )

    architecture = bio.ArchitectureFromFileDescr(
        source=Path(ARCHITECTURE_FILE),
        callable=bio.Identifier("PortableUNet"),
        kwargs={
            "features": cfg.features,
            "depth": cfg.depth,
            "in_channels": cfg.in_channels,
        },
    )
    entries: dict[str, Any] = {
        "pytorch_state_dict": bio.PytorchStateDictWeightsDescr(
            source=Path("weights.pt"),
            architecture=architecture,
            pytorch_version=torch_version,
        )
    }
    if "torchscript" in weights:
        entries["torchscript"] = bio.TorchscriptWeightsDescr(
            source=Path("weights-torchscript.pt"),
            pytorch_version=torch_version,
            parent="pytorch_state_dict",
        )
    if "onnx" in weights:
        entries["onnx"] = bio.OnnxWeightsDescr(
            source=Path("weights.onnx"), opset_version=17, parent="pytorch_state_dict"
        )
    ours = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": model.name,
        # What the package holds: the nucleus probability, without object maps.
        "architecture": {**cfg.to_dict(), "object_maps": []},
        "normalization": norm.to_dict(),
        "threshold": float(model.threshold),
        "summary": _yaml_safe(model.summary),
        "plugin_version": _version(),
    }
    return bio.ModelDescr(
        name=name,
        description=description,
        authors=[bio.Author(name=author) for author in authors],
        cite=[bio.CiteEntry(text=text, doi=bio.Doi(doi)) for text, doi in _CITATIONS],
        license=bio.LicenseId(license),
        tags=["nuclei", "segmentation", "fluorescence", "unet", "2d", "pytorch"],
        documentation=bio.FileDescr(source=Path("README.md")),
        covers=[bio.FileDescr(source=Path(cover_name))],
        inputs=[
            bio.InputTensorDescr(
                id=raw,
                description="grey fluorescence image (nuclear stain)",
                axes=[
                    bio.BatchAxis(),
                    bio.ChannelAxis(channel_names=[bio.Identifier("nuclei")]),
                    space_in("y"),
                    space_in("x"),
                ],
                test_tensor=bio.FileDescr(source=Path("test_input.npy")),
                sample_tensor=bio.FileDescr(source=Path("sample_input.tif")),
                preprocessing=[
                    bio.ScaleRangeDescr(
                        kwargs=bio.ScaleRangeKwargs(
                            axes=(bio.AxisId("y"), bio.AxisId("x")),
                            min_percentile=norm.low_percentile,
                            max_percentile=norm.high_percentile,
                        )
                    )
                ],
            )
        ],
        outputs=[
            bio.OutputTensorDescr(
                id=prob,
                description="nucleus probability",
                axes=[
                    bio.BatchAxis(),
                    bio.ChannelAxis(channel_names=[bio.Identifier("nucleus")]),
                    space_out("y"),
                    space_out("x"),
                ],
                data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                test_tensor=bio.FileDescr(source=Path("test_output.npy")),
                sample_tensor=bio.FileDescr(source=Path("sample_output.tif")),
                postprocessing=[bio.SigmoidDescr()],
            )
        ],
        weights=bio.WeightsDescr(**entries),
        config=bio.Config(**{CONFIG_KEY: ours}),
    )


def export_bioimageio(
    model: NucleiModel,
    path: str | os.PathLike,
    *,
    cover: str | os.PathLike | None = None,
    test_image: np.ndarray | None = None,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("napari-unet-nuclei user",),
    license: str = "CC-BY-4.0",
    weights: Sequence[str] = ("pytorch_state_dict", "torchscript", "onnx"),
) -> Path:
    """Write a bioimage.io model package (zip, model description format 0.5).

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    path : str or path-like
        Target ``.zip`` file.
    cover : str or path-like, optional
        A PNG/JPEG cover image; by default the test image beside its predicted probability.
    test_image : numpy.ndarray, optional
        2-D image for the package's test input/output (cropped to at most 256 x 256 and to
        a multiple of ``2**depth``); a synthetic nuclei image by default. The test output is
        computed by :func:`~napari_unet_nuclei.prediction.inference.predict`.
    name, description : str, optional
        Shown on bioimage.io; derived from the model by default.
    authors : sequence of str
        Names of the people who made the model.
    license : str
        SPDX licence identifier of the weights.
    weights : sequence of str
        Weight formats to include; ``pytorch_state_dict`` is always included (the others are
        converted from it and the importer reads it).

    Returns
    -------
    pathlib.Path
        The written package, which passed bioimageio.spec's validation.

    Raises
    ------
    ExportError
        bioimageio.spec is not installed, or the package did not validate.
    """
    _require_bioimageio_spec()
    import tifffile
    import torch
    from bioimageio.spec import InvalidDescr, ValidationContext, save_bioimageio_package

    unknown = set(weights) - {"pytorch_state_dict", "torchscript", "onnx"}
    if unknown:
        raise ValueError(f"Unknown weight formats {sorted(unknown)}.")
    norm = model.normalization
    if norm.high_percentile <= 1.0:
        raise ExportError(
            "bioimage.io's scale_range needs an upper percentile above 1; this model uses "
            f"{norm.high_percentile}."
        )
    cfg = model.config
    name = name or f"napari-unet-nuclei {model.name}"
    description = description or (
        f"U-Net (F={cfg.features}, depth={cfg.depth}) for binary nuclei segmentation in 2-D "
        "fluorescence microscopy, trained with napari-unet-nuclei."
    )
    image = _test_image(model, test_image)
    # float32: other tools reproduce the test output with the float32 weights.
    probabilities = predict(model, image, device="cpu", precision="fp32").astype(np.float32)

    with tempfile.TemporaryDirectory(prefix="bioimageio-") as folder:
        root = Path(folder)
        np.save(root / "test_input.npy", image[None, None])
        np.save(root / "test_output.npy", probabilities[None, None])
        tifffile.imwrite(root / "sample_input.tif", image, compression="zlib")
        tifffile.imwrite(root / "sample_output.tif", probabilities, compression="zlib")
        # The nucleus logit only (see portable_network): the architecture described below.
        torch.save(
            {k: v.detach().cpu().clone() for k, v in portable_network(model).state_dict().items()},
            root / "weights.pt",
        )
        shutil.copyfile(
            Path(__file__).parents[1] / "nn" / ARCHITECTURE_FILE, root / ARCHITECTURE_FILE
        )
        (root / "README.md").write_text(_readme(model, name), encoding="utf-8")
        cover_name = "cover.png"
        if cover is None:
            _write_cover(root / cover_name, image, probabilities, name)
        else:
            cover = Path(cover)
            if cover.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                raise ValueError(f"cover must be a PNG or JPEG image, got {cover}.")
            cover_name = f"cover{cover.suffix.lower()}"
            shutil.copyfile(cover, root / cover_name)
        if "torchscript" in weights:
            export_torchscript(model, root / "weights-torchscript.pt")
        if "onnx" in weights:
            export_onnx(model, root / "weights.onnx", opset=17)

        try:
            with ValidationContext(root=root, perform_io_checks=True, log_warnings=False):
                descr = _model_description(
                    model,
                    name=name,
                    description=description,
                    authors=authors,
                    license=license,
                    weights=weights,
                    cover_name=cover_name,
                )
        except ValueError as error:  # pydantic's ValidationError, e.g. an unknown licence
            raise ExportError(f"Invalid bioimage.io description: {error}") from error
        if isinstance(descr, InvalidDescr):  # pragma: no cover - the constructor raises
            raise ExportError(f"Invalid bioimage.io description: {descr}")
        target = Path(path)
        try:
            with (
                atomic_path(target, suffix=".zip") as temporary,
                ValidationContext(root=root, perform_io_checks=True, log_warnings=False),
            ):
                save_bioimageio_package(descr, output_path=temporary)
        except Exception as error:
            raise ExportError(
                f"Could not write the bioimage.io package {target}: {error}"
            ) from error
    return target


def validate_bioimageio(path: str | os.PathLike) -> Any:
    """Validate a bioimage.io package with bioimageio.spec, without network access.

    Files inside the package are read and hashed and the test tensors are checked against
    the description (``perform_io_checks``); our packages reference no remote file.

    Parameters
    ----------
    path : str or path-like
        A ``.zip`` package, a folder or its ``rdf.yaml``/``bioimageio.yaml``.

    Returns
    -------
    bioimageio.spec.ModelDescr
        The validated description (``.validation_summary`` holds the details).

    Raises
    ------
    ExportError
        The package is not a valid bioimage.io model description.
    """
    spec = _require_bioimageio_spec()
    descr = spec.load_description(Path(path), perform_io_checks=True)
    if isinstance(descr, spec.InvalidDescr) or descr.validation_summary.status == "failed":
        summary = descr.validation_summary
        errors = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.errors)
        raise ExportError(f"{path} is not a valid bioimage.io package: {errors or summary}")
    return descr
