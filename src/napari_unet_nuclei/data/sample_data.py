"""Sample data: synthetic fluorescence nuclei and the Kromp et al. 2020 dataset.

:func:`make_synthetic_nuclei` draws a fluorescence-like image with exact instance labels
for demos and fast tests. :func:`load_kromp` reads a local copy of the annotated dataset of
Kromp et al. 2020 (Sci. Data 7:262, BioStudies S-BSST265, CC0) and :func:`fetch_kromp`
downloads it once, verified against a pinned SHA-256.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
from scipy import ndimage as ndi

from napari_unet_nuclei.io.datasets import read_pairs
from napari_unet_nuclei.io.labelled import DataError, LabelledImage

__all__ = [
    "KROMP_HASH",
    "KROMP_URL",
    "fetch_kromp",
    "kromp_folders",
    "load_kromp",
    "make_synthetic_nuclei",
    "synthetic_dataset",
    "user_cache_folder",
]

#: The dataset archive of Kromp et al. 2020 on BioStudies (S-BSST265), about 1 GB.
KROMP_URL = "https://www.ebi.ac.uk/biostudies/files/S-BSST265/dataset.zip"
#: SHA-256 of ``dataset.zip``. Not computed here (no network when this was written): it is
#: the checksum pinned independently by torch-em (``torch_em/data/datasets/light_microscopy/
#: ifnuclei.py``, ``CHECKSUM``) and quoted as the archive's provenance hash by another public
#: project. To re-verify, download the archive once from KROMP_URL and compare
#: ``sha256sum dataset.zip``; if BioStudies ever changes the file, pooch refuses it and
#: this constant must be updated after checking the new archive by hand. Set it to None to
#: disable downloading rather than accept an unverified file.
KROMP_HASH: str | None = "8285987ed4d57c46a46a55a33c1c085875ea41f429b59cde31d249741aa07ad1"

#: Folder (in the cache folder) that :func:`fetch_kromp` unpacks the archive into.
KROMP_FOLDER = "kromp2020"
#: Sub-folder names of the two layouts: this project's and the BioStudies archive's.
_KROMP_LAYOUTS = (("images", "masks"), ("rawimages", "groundtruth"))


# --------------------------------------------------------------------------- synthetic


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _place_nuclei(
    rng: np.random.Generator, shape: tuple[int, int], count: int
) -> list[tuple[float, float, float, float, float]]:
    """Return ``(y, x, a, b, angle)`` ellipses; about a quarter pressed against another."""
    height, width = shape
    scale = min(height, width)
    mean_radius = float(np.clip(scale / 8.0, 3.0, 10.0))  # pixels, as at ~20x
    nuclei: list[tuple[float, float, float, float, float]] = []
    for _ in range(count):
        a = mean_radius * rng.uniform(0.75, 1.35)
        b = a * rng.uniform(0.6, 0.95)
        angle = rng.uniform(0, np.pi)
        placed = None
        if nuclei and rng.random() < 0.3:
            # Touching or slightly overlapping a neighbour (a small cluster).
            y0, x0, a0, b0, _ = nuclei[rng.integers(len(nuclei))]
            theta = rng.uniform(0, 2 * np.pi)
            dist = (0.5 * (a0 + b0) + 0.5 * (a + b)) * rng.uniform(0.8, 0.95)
            y, x = y0 + dist * np.sin(theta), x0 + dist * np.cos(theta)
            if 0 <= y < height and 0 <= x < width:
                placed = (y, x)
        if placed is None:
            for _attempt in range(30):
                y, x = rng.uniform(0, height), rng.uniform(0, width)
                if all(np.hypot(y - n[0], x - n[1]) > 1.1 * (a + n[2]) for n in nuclei):
                    placed = (y, x)
                    break
        if placed is not None:
            nuclei.append((placed[0], placed[1], a, b, angle))
    return nuclei


def make_synthetic_nuclei(
    shape: tuple[int, int] = (256, 256), n_nuclei: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a synthetic fluorescence image of nuclei and its instance labels.

    Nuclei are irregular ellipses of varied size, orientation and brightness, some in
    touching or overlapping clusters (labels give each pixel to the nearest nucleus, so they
    partition the foreground). Interiors carry smooth texture and bright chromatin spots;
    the image is blurred by a Gaussian PSF, lies on an uneven background and carries
    Poisson shot noise, a camera offset and read noise.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)``, each at least 16.
    n_nuclei : int, optional
        Number of nuclei to try to place; by default about one per 1,300 pixels. Fewer may
        be placed in a crowded image.
    seed : int
        Seed of the random generator; the same seed gives the same output.

    Returns
    -------
    image : numpy.ndarray
        uint16 ``shape`` image.
    labels : numpy.ndarray
        int32 ``shape`` labels: 0 background, ids ``1..n`` (consecutive).
    """
    height, width = (int(s) for s in shape)
    if len(tuple(shape)) != 2 or height < 16 or width < 16:
        raise ValueError(f"shape must be (height, width) with both >= 16, got {shape!r}.")
    rng = np.random.default_rng(seed)
    if n_nuclei is None:
        n_nuclei = max(1, round(height * width / 1300 * rng.uniform(0.85, 1.15)))
    if n_nuclei < 0:
        raise ValueError(f"n_nuclei must be >= 0, got {n_nuclei}.")
    nuclei = _place_nuclei(rng, (height, width), int(n_nuclei))

    labels = np.zeros((height, width), np.int32)
    best = np.full((height, width), np.inf)  # normalised radius of the owning nucleus
    signal = np.zeros((height, width))
    for index, (yc, xc, a, b, angle) in enumerate(nuclei, start=1):
        reach = a * 1.25 + 2
        y0, y1 = max(0, int(yc - reach)), min(height, int(yc + reach) + 1)
        x0, x1 = max(0, int(xc - reach)), min(width, int(xc + reach) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - yc, xx - xc
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        theta = np.arctan2(v / b, u / a)
        wobble = 1.0 + sum(
            rng.uniform(0, 0.07) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
        )
        rho = np.hypot(u / a, v / b) / wobble
        inside = rho <= 1.0
        window = best[y0:y1, x0:x1]
        take = inside & (rho < window)
        window[take] = rho[take]
        labels[y0:y1, x0:x1][take] = index
        # Brightness: varied per nucleus, slightly brighter towards the rim or the centre.
        level = rng.lognormal(0.0, 0.35)
        profile = 1.0 + rng.uniform(-0.25, 0.15) * rho**2
        edge = np.clip((1.0 - rho) / 0.12, 0.0, 1.0)
        signal[y0:y1, x0:x1] = np.maximum(signal[y0:y1, x0:x1], level * profile * edge)

    # Drop nuclei that lost every pixel to a neighbour; keep ids consecutive.
    present = np.unique(labels)
    present = present[present > 0]
    relabel = np.zeros(len(nuclei) + 1, np.int32)
    relabel[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    labels = relabel[labels]

    # Texture: smooth chromatin density plus small bright spots.
    texture = 1.0 + 0.18 * _smooth_noise(rng, (height, width), 1.5)
    spots = np.zeros((height, width))
    n_spots = int(labels.astype(bool).sum() / 40)
    if n_spots:
        sy = rng.integers(0, height, n_spots)
        sx = rng.integers(0, width, n_spots)
        np.add.at(spots, (sy, sx), rng.uniform(0.5, 1.5, n_spots))
        spots = ndi.gaussian_filter(spots, 0.9) * 6.0
    nuclear = signal * np.clip(texture + spots, 0.2, None)

    # Optics and background (in photons), then the camera.
    photons_peak = rng.uniform(250, 500)
    psf = ndi.gaussian_filter(nuclear, rng.uniform(1.0, 1.6))
    yy, xx = np.mgrid[0:height, 0:width]
    gy, gx = rng.uniform(-1, 1, 2)
    gradient = 1.0 + 0.5 * (gy * (yy / height - 0.5) + gx * (xx / width - 0.5))
    haze = 1.0 + 0.25 * _smooth_noise(rng, (height, width), min(height, width) / 6)
    background = rng.uniform(20, 40) * np.clip(gradient * haze, 0.2, None)
    expected = photons_peak * psf + background
    counts = rng.poisson(expected).astype(np.float64)
    gain, offset, read_noise = 2.0, 100.0, 3.0
    adu = offset + gain * counts + rng.normal(0.0, read_noise, counts.shape)
    image = np.clip(np.rint(adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image, labels


def synthetic_dataset(
    n_images: int = 8, shape: tuple[int, int] = (256, 256), seed: int = 0
) -> list[LabelledImage]:
    """Return ``n_images`` synthetic images named ``synthetic_000``, ``synthetic_001`` ...

    Each image gets its own seed drawn from ``numpy.random.SeedSequence(seed)``, so the
    whole list is reproducible and the images differ from each other.
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}.")
    seeds = np.random.SeedSequence(seed).generate_state(n_images) if n_images else []
    items = []
    for index, child in enumerate(seeds):
        image, labels = make_synthetic_nuclei(shape, seed=int(child))
        items.append(LabelledImage(f"synthetic_{index:03d}", image, labels))
    return items


# --------------------------------------------------------------------------- Kromp 2020


def kromp_folders(root: Path) -> tuple[Path, Path] | None:
    """Find the image and mask folders in ``root`` or one level below it."""
    for base in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        for image_sub, mask_sub in _KROMP_LAYOUTS:
            if (base / image_sub).is_dir() and (base / mask_sub).is_dir():
                return base / image_sub, base / mask_sub
    return None


def load_kromp(
    root: str | os.PathLike[str], names: Iterable[str] | None = None
) -> list[LabelledImage]:
    """Read the Kromp et al. 2020 dataset from a local folder.

    Parameters
    ----------
    root : str or os.PathLike
        Folder with ``images/`` and ``masks/`` (this project's layout, as in the shared
        test data), or the BioStudies archive's ``rawimages/`` and ``groundtruth/`` (as
        returned by :func:`fetch_kromp`), possibly one folder down.
    names : iterable of str, optional
        Image names (file stems) to read, in this order; all images sorted by name when
        omitted.

    Returns
    -------
    list of LabelledImage
        uint8 grey images with their instance labels.

    Raises
    ------
    DataError
        If the folder or a requested image is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"Kromp dataset folder {str(root)!r} not found. Point to the folder holding "
            "images/ and masks/, or download it with fetch_kromp()."
        )
    dirs = kromp_folders(root)
    if dirs is None:
        raise DataError(
            f"{str(root)!r} holds neither images/ + masks/ nor rawimages/ + groundtruth/; "
            "point to the Kromp dataset folder."
        )
    return read_pairs(dirs[0], dirs[1], names)


def _local_file_downloader(url: str, output_file: Any, pooch: Any = None) -> None:
    """pooch downloader for ``file://`` URLs (a mirror on a local or network drive)."""
    source = Path(url2pathname(unquote(urlparse(url).path)))
    if not source.is_file():
        raise DataError(f"{url!r}: local file {str(source)!r} not found.")
    if isinstance(output_file, (str, os.PathLike)):
        shutil.copyfile(source, output_file)
    else:
        with open(source, "rb") as handle:
            shutil.copyfileobj(handle, output_file)


def user_cache_folder() -> Path:
    """pooch's user cache folder of this plugin, where :func:`fetch_kromp` downloads to."""
    import pooch

    return Path(pooch.os_cache("napari-unet-nuclei"))


def fetch_kromp(
    cache_dir: str | os.PathLike[str] | None = None,
    url: str = KROMP_URL,
    known_hash: str | None = KROMP_HASH,
) -> Path:
    """Download and unpack the Kromp et al. 2020 dataset once; return its folder.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        Where to keep the archive and the unpacked files; pooch's user cache folder
        (``napari-unet-nuclei``) by default. A verified archive already there is reused.
    url : str
        Archive URL (``https://`` or ``file://`` for a local mirror).
    known_hash : str or None
        SHA-256 of the archive (hex, optionally prefixed ``sha256:``). The download is
        refused when it is None, and discarded when the file does not match.

    Returns
    -------
    pathlib.Path
        Folder holding the unpacked dataset (``rawimages/`` and ``groundtruth/`` for the
        BioStudies archive); pass it to :func:`load_kromp`.

    Raises
    ------
    DataError
        If no hash is pinned, the download fails, or the file does not match the hash.
    """
    import pooch

    if not known_hash:
        raise DataError(
            "Refusing to download the Kromp dataset without a pinned SHA-256: an unverified "
            "archive could be corrupted or altered. Pass known_hash= after checking the file."
        )
    known_hash = known_hash if ":" in known_hash else f"sha256:{known_hash}"
    cache = Path(cache_dir) if cache_dir is not None else user_cache_folder()
    cache.mkdir(parents=True, exist_ok=True)
    extract_dir = KROMP_FOLDER
    downloader = _local_file_downloader if url.startswith("file:") else None
    try:
        pooch.retrieve(
            url,
            known_hash=known_hash,
            fname="kromp2020_dataset.zip",
            path=cache,
            processor=pooch.Unzip(extract_dir=extract_dir),
            downloader=downloader,
            progressbar=False,
        )
    except DataError:
        raise
    except ValueError as exc:  # pooch: hash mismatch
        raise DataError(
            f"The file downloaded from {url} does not match the pinned SHA-256 and was "
            f"discarded ({exc}). The server may serve a different or damaged file; check it "
            "before changing the hash."
        ) from exc
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"Could not download the Kromp dataset from {url} ({type(exc).__name__}: {exc}). "
            "Check the network connection, or download the archive by hand and pass a "
            "file:// URL."
        ) from exc
    folder = cache / extract_dir
    dirs = kromp_folders(folder)
    return dirs[0].parent if dirs is not None else folder
