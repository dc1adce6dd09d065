"""Nuclei as objects: object maps as training targets, the object-aware U-Net, instances from
its maps, 3-D stitching of z-stacks, and old probability-only model files."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tifffile

from napari_unet_nuclei.evaluate.object_metrics import object_scores
from napari_unet_nuclei.io.model_io import load_model, model_to_dict, save_model
from napari_unet_nuclei.nn.model import create_model
from napari_unet_nuclei.nn.object_targets import (
    instance_labels,
    object_maps,
    painted_with_one_value,
)
from napari_unet_nuclei.prediction.instances import (
    InstanceConfig,
    instances_from_maps,
    iter_instances,
)
from napari_unet_nuclei.prediction.stitching import stitch_slices
from napari_unet_nuclei.workflows.segmentation import default_instance_config, predict_instances

# Two nuclei of Ganglioneuroblastoma_2 (a Kromp training image) that touch along ~20
# pixels without a neck: the distance-transform watershed of their mask keeps them as one.
PAIR_IMAGE = "Ganglioneuroblastoma_2"
PAIR_CROP = (slice(527, 591), slice(85, 149))


@pytest.fixture(scope="module")
def touching_pair(kromp_root):
    image = tifffile.imread(kromp_root / "images" / f"{PAIR_IMAGE}.tif")[PAIR_CROP]
    labels = tifffile.imread(kromp_root / "masks" / f"{PAIR_IMAGE}.tif")[PAIR_CROP]
    return image, labels.astype(np.int32)


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for number, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (labels == 0)] = number
    return labels


def test_object_maps_of_two_touching_nuclei(touching_pair) -> None:
    _, labels = touching_pair
    centre, boundary = object_maps(labels, ("centre", "boundary"))
    ids = [i for i in np.unique(labels) if i]
    assert len(ids) == 2
    for number in ids:
        own = labels == number
        assert centre[own].max() == pytest.approx(1.0)  # one peak of 1 per nucleus
        assert centre[own].min() > 0
    assert (centre[labels == 0] == 0).all()
    # The boundary map marks where the two nuclei touch, and only there.
    touching = boundary > 0
    assert 10 < touching.sum() < 150
    from scipy import ndimage as ndi

    near = [ndi.binary_dilation(labels == n, structure=np.ones((3, 3), bool)) for n in ids]
    assert (touching <= (near[0] & near[1])).all()  # within a pixel of both nuclei
    # A lone nucleus has no boundary at all.
    lone = _discs((40, 40), [(20, 20)], 10)
    assert object_maps(lone, ("boundary",)).max() == 0


def test_one_value_labels_are_split_into_parts_and_flagged() -> None:
    labels = _discs((60, 60), [(15, 15), (45, 45)], 8)
    painted = (labels > 0).astype(np.uint8) * 7
    assert painted_with_one_value(painted)
    assert not painted_with_one_value(labels)
    assert not painted_with_one_value((_discs((40, 40), [(20, 20)], 8) > 0).astype(np.uint8))
    split = instance_labels(painted)
    assert split.max() == 2 and ((split > 0) == (labels > 0)).all()
    floats = instance_labels(labels.astype(np.float32))
    assert (floats == labels).all() and floats.dtype == np.int32


def test_centre_map_seeds_split_what_the_mask_shape_cannot(touching_pair) -> None:
    _, labels = touching_pair
    probabilities = (labels > 0).astype(np.float32)
    centre, boundary = object_maps(labels, ("centre", "boundary"))
    from napari_unet_nuclei.prediction.instances import instances_from_probabilities

    assert instances_from_probabilities(probabilities).max() == 1  # the shape alone merges
    for seeds, maps in (("centre", {"centre": centre}), ("boundary", {"boundary": boundary})):
        found = instances_from_maps(probabilities, maps, InstanceConfig(seeds=seeds))
        assert found.dtype == np.int32 and found.max() == 2
        assert object_scores(found, labels)["f1"] == 1.0
    with pytest.raises(ValueError, match="needs the network's 'boundary' map"):
        instances_from_maps(probabilities, {"centre": centre}, InstanceConfig(seeds="boundary"))


@pytest.mark.slow
def test_two_ids_teach_the_network_to_separate_one_value_teaches_it_to_merge(
    touching_pair, one_torch_thread
) -> None:
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    image, labels = touching_pair
    config = TrainingConfig(
        features=8,
        depth=2,
        epochs=1,
        steps_per_epoch=200,
        batch_size=4,
        patch_size=64,
        learning_rate=1e-2,
        validation_fraction=0.0,
        device="cpu",
        seed=0,
        object_maps=("centre", "boundary"),
    )
    separated = train_model([image], [labels], config)
    assert separated.object_maps == ("centre", "boundary")
    found = predict_instances(separated, image)
    assert found.dtype == np.int32 and found.shape == image.shape
    scores = object_scores(found, labels)
    assert found.max() == 2 and scores["tp"] == 2 and scores["f1"] == 1.0
    merged = train_model([image], [(labels > 0).astype(np.uint8)], config)
    assert predict_instances(merged, image).max() == 1
    # Several nuclei painted with one value: training says what that teaches.
    two_apart = np.zeros((64, 128), np.uint8)
    two_apart[:, :64], two_apart[:, 64:] = labels > 0, labels > 0
    quick = replace(config, steps_per_epoch=1)
    with pytest.warns(UserWarning, match="touching nuclei painted with one value teach"):
        train_model([np.hstack([image, image])], [two_apart], quick)


def test_stitch_slices_links_nuclei_across_z() -> None:
    sphere_a = [_discs((50, 50), [(15, 15)], r) for r in (4, 7, 8, 7, 4)]
    sphere_b = [_discs((50, 50), [(35, 36)], r) for r in (6, 9, 6)]
    stack = np.zeros((7, 50, 50), np.int32)
    for z, disc in enumerate(sphere_a):
        stack[z][disc > 0] = 5 + z  # a new id in every slice, as per-slice labelling gives
    for z, disc in enumerate(sphere_b, start=3):
        stack[z][disc > 0] = 50 + z
    stitched = stitch_slices(stack)
    assert stitched.dtype == np.int32 and stitched.shape == stack.shape
    assert set(np.unique(stitched)) == {0, 1, 2}
    assert ((stitched > 0) == (stack > 0)).all()
    for nucleus in ((stack > 0) & (stack < 50), stack >= 50):
        assert np.unique(stitched[nucleus]).size == 1  # one id in every slice it spans
    # A nucleus that shifts a little between slices stays one; one far away starts anew.
    moving = np.zeros((2, 50, 50), np.int32)
    moving[0] = _discs((50, 50), [(20, 20)], 8)
    moving[1] = _discs((50, 50), [(22, 21)], 8) * 3
    assert stitch_slices(moving).max() == 1
    moving[1] = _discs((50, 50), [(40, 40)], 8)
    assert stitch_slices(moving).max() == 2
    with pytest.raises(ValueError, match=r"\(Z, H, W\)"):
        stitch_slices(stack[0])


@pytest.mark.slow
def test_z_stack_gives_about_as_many_3d_nuclei_as_there_are(kromp_root, one_torch_thread) -> None:
    """The shared 60 x 256 x 256 stack holds 20 nuclei (machine-made labels): slices linked
    one by one gave 224 objects; the stack as one volume gives about 20, none in a single
    slice, matching the labels' nuclei."""
    from napari_unet_nuclei.evaluate.object_metrics import object_error_map
    from napari_unet_nuclei.prediction.measurements import measure_nuclei

    folder = kromp_root.parent / "nuclei3d"
    stack = tifffile.imread(folder / "nuclei.tif")
    truth = tifffile.imread(folder / "nuclei_label.tif")
    model = load_model("fluo-nuclei")
    volume = predict_instances(model, stack, stack_axis="z")
    assert volume.shape == stack.shape and volume.dtype == np.int32
    n_objects = int(volume.max())
    assert set(np.unique(volume)) == set(range(n_objects + 1))  # consecutive ids
    assert 16 <= n_objects <= 26
    errors = object_error_map(volume.reshape(-1, 256), truth.reshape(-1, 256), paint=False)
    assert errors.match.scores()["f1"] >= 0.85 and errors.merges == 0
    for number in range(1, n_objects + 1):
        slices = np.flatnonzero((volume == number).any(axis=(1, 2)))
        assert slices.size >= 2 and (np.diff(slices) == 1).all()  # an unbroken run
    table = measure_nuclei(volume, stack, per_frame=False)
    assert table["label"].size == n_objects and (table["volume_voxels"] > 0).all()
    assert int(table["volume_voxels"].sum()) == int(np.count_nonzero(volume))
    with pytest.raises(ValueError, match="stack_axis='z' needs a"):
        predict_instances(model, stack[0], stack_axis="z")


def test_probability_only_model_files_still_load_and_segment(tmp_path, touching_pair) -> None:
    image, _ = touching_pair
    model = create_model(features=4, depth=2)  # the lab's U-Net: one output channel
    assert model.config.out_channels == 1 and model.instance_seeds == "distance"
    data = model_to_dict(model)
    data["architecture"].pop("object_maps")  # as files written before object maps existed
    import torch

    path = tmp_path / "old.pt"
    torch.save(data, path)
    old = load_model(path)
    assert old.object_maps == () and old.network.head.out_channels == 1
    assert default_instance_config(old).seeds == "distance"
    found = predict_instances(old, image)
    assert found.shape == image.shape and found.dtype == np.int32
    # An object-aware model round-trips with its maps.
    aware = create_model(features=4, depth=2, object_maps=("centre", "boundary"))
    back = load_model(save_model(aware, tmp_path / "aware.pt"))
    assert back.object_maps == ("centre", "boundary") and back.network.head.out_channels == 3
    assert default_instance_config(back).seeds == "centre"


def test_iter_instances_uses_maps_frame_by_frame(touching_pair) -> None:
    _, labels = touching_pair
    probabilities = np.stack([(labels > 0).astype(np.float32)] * 3)
    centre = np.stack([object_maps(labels, ("centre",))[0]] * 3)
    config = InstanceConfig(seeds="centre")
    generator = iter_instances(probabilities, config, maps={"centre": centre})
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            result = stop.value
            break
    assert len(events) == 3 and result.max() == 6  # ids unique in the stack
    stitched = list(iter_instances(probabilities, config, maps={"centre": centre}, stack_axis="z"))
    assert len(stitched) == 3
    volume = np.zeros(probabilities.shape, np.int32)
    for _ in iter_instances(
        probabilities, config, maps={"centre": centre}, stack_axis="z", out=volume
    ):
        pass
    assert volume.max() == 2


def test_exports_of_an_object_aware_model_carry_the_nucleus_probability(
    tmp_path, touching_pair
) -> None:
    import onnxruntime as ort
    import torch

    from napari_unet_nuclei.io.bioimageio_package import import_bioimageio
    from napari_unet_nuclei.nn.normalization import normalize_frame
    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.workflows.bioimageio_export import export_bioimageio
    from napari_unet_nuclei.workflows.network_export import export_onnx

    image, _ = touching_pair
    torch.manual_seed(0)
    aware = create_model(features=4, depth=2, object_maps=("centre", "boundary"))
    aware.network.eval()
    expected = predict(aware, image, precision="fp32", backend="torch")
    session = ort.InferenceSession(
        str(export_onnx(aware, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"]
    )
    x = normalize_frame(image, aware.normalization)[None, None].astype(np.float32)
    (logits,) = session.run(None, {"input": x})
    assert logits.shape == (1, 1, *image.shape)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[0, 0])), expected, atol=1e-4)
    package = export_bioimageio(aware, tmp_path / "m.zip", test_image=image)
    imported = import_bioimageio(package)
    assert imported.object_maps == () and imported.network.head.out_channels == 1
    np.testing.assert_allclose(predict(imported, image, precision="fp32"), expected, atol=1e-5)


def test_fine_tuning_keeps_the_instance_rule_of_the_model_it_started_from(touching_pair) -> None:
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    image, labels = touching_pair
    start = create_model(features=4, depth=2, object_maps=("centre", "boundary"))
    start.summary["instance_config"] = InstanceConfig(seeds="distance", min_size=20).to_dict()
    config = TrainingConfig(
        epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64, validation_fraction=0.0
    )
    tuned = train_model([image], [labels], config, init_model=start)
    rule = default_instance_config(tuned)
    assert (rule.seeds, rule.min_size) == ("distance", 20)
    assert rule.threshold == pytest.approx(tuned.threshold)


def test_training_chooses_the_instance_rule_on_validation_images(kromp_root) -> None:
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    image = tifffile.imread(kromp_root / "images" / "Ganglioneuroblastoma_0.tif")[:128, :256]
    labels = tifffile.imread(kromp_root / "masks" / "Ganglioneuroblastoma_0.tif")[:128, :256]
    config = TrainingConfig(
        features=4,
        depth=2,
        epochs=1,
        steps_per_epoch=3,
        batch_size=2,
        patch_size=64,
        validation_fraction=0.5,
        object_maps=("centre", "boundary"),
    )
    halves = [image[:, :128], image[:, 128:]], [labels[:, :128], labels[:, 128:]]
    model = train_model(*halves, config)
    choice = model.summary["instance_rule_choice"]
    assert set(choice["val_object_f1_by_rule"]) == {"distance", "centre", "boundary"}
    rule = default_instance_config(model)
    assert rule.seeds in ("distance", "centre", "boundary")
    best = choice["val_object_f1_by_rule"][rule.seeds]
    assert best == pytest.approx(choice["val_object_f1"])
    assert all(best >= value - 0.005 for value in choice["val_object_f1_by_rule"].values())
    plain = train_model(*halves, replace(config, object_maps=()))
    assert "instance_rule_choice" not in plain.summary


def test_z_slices_are_told_from_separate_frames(kromp_root) -> None:
    import tifffile

    from napari_unet_nuclei.prediction.volumes import looks_like_z_slices

    stack = tifffile.imread(kromp_root.parent / "nuclei3d" / "nuclei.tif")[16:40, :128, :128]
    masks = stack > np.percentile(stack, 80)
    assert looks_like_z_slices(masks)
    assert not looks_like_z_slices(masks[:2])  # too few to tell
    images = [
        tifffile.imread(kromp_root / "masks" / f"{name}.tif")[:256, :256]
        for name in ("Ganglioneuroblastoma_0", "normal_34", "Neuroblastoma_1")
    ]
    assert not looks_like_z_slices(np.stack(images))
