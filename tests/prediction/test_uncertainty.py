"""Annotate next, engine: uncertainty scores of frames and tiles on the lab's real images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet_nuclei.prediction.inference import InferenceCancelled
from napari_unet_nuclei.prediction.ranking import (
    FrameRanking,
    FrameScored,
    RankingProgress,
    diverse_order,
    iter_rank_frames,
    iter_rank_tiles,
    rank_frames,
    rank_tiles,
)
from napari_unet_nuclei.prediction.uncertainty import uncertainty_maps


def degrade(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """Heavy Gaussian noise (as strong as the image's own contrast): a badly exposed frame."""
    rng = np.random.default_rng(seed)
    image = image.astype(np.float32)
    return image + rng.normal(0.0, image.std(), image.shape).astype(np.float32)


@pytest.fixture(scope="module")
def lab(lab_arrays, splits):
    """lab_70_9 training and test images (128 x 128)."""
    x, y, names = lab_arrays
    index = {str(n): i for i, n in enumerate(names)}
    split = splits["lab_70_9"]
    train = [index[n] for n in split["train"]]
    test = [index[n] for n in split["test"]]
    return x[train, 0], y[train, 0], x[test, 0]


@pytest.fixture(scope="module")
def tiny_model(lab):
    """F=4, depth 2, trained briefly (120 steps of 8 patches) on 12 lab_70_9 images."""
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    images, labels, _ = lab
    config = TrainingConfig(
        features=4,
        depth=2,
        epochs=2,
        steps_per_epoch=60,
        batch_size=8,
        learning_rate=1e-2,
        patch_size=64,
        validation_fraction=0.0,
        device="cpu",
        seed=0,
    )
    return train_model(list(images[:12]), list(labels[:12]), config)


def test_degraded_frame_ranks_ahead_of_clean_ones(tiny_model, lab) -> None:
    _, _, test = lab
    stack = np.stack([*test[:5], degrade(test[5]), test[6]])
    events = []
    generator = iter_rank_frames(tiny_model, stack, diversity=0.0)
    while True:
        try:
            events.append(next(generator))
        except StopIteration as done:
            ranking = done.value
            break
    assert isinstance(ranking, FrameRanking)
    scores = [s.score for s in ranking.scores]
    assert all(np.isfinite(scores)) and all(0.0 <= s <= 1.0 for s in scores)
    assert ranking.order[0] == 5, scores
    assert scores[5] > max(scores[:5] + scores[6:])
    # Same with the default diversity term: the degraded frame is also the most novel.
    assert rank_frames(tiny_model, stack).order[0] == 5
    # The degraded version of a frame scores above its clean version.
    clean = rank_frames(tiny_model, test[5][None], diversity=0.0).scores[0]
    assert ranking.scores[5].entropy > clean.entropy
    assert ranking.scores[5].uncertain_fraction > clean.uncertain_fraction
    # Progress: one FrameScored per frame, fractions increasing up to 1.
    scored = [e for e in events if isinstance(e, FrameScored)]
    assert [e.frame for e in scored] == list(range(7))
    fractions = [e.fraction for e in events if isinstance(e, RankingProgress)]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_ranking_shapes_and_annotated_frames(tiny_model, lab) -> None:
    _, _, test = lab
    stack = np.stack(test[:6]).reshape(2, 3, 128, 128)
    ranking = rank_frames(tiny_model, stack, labelled=[0, 4])
    channels = tiny_model.config.features * 2**tiny_model.config.depth
    assert ranking.embeddings.shape == (6, channels)
    np.testing.assert_allclose(np.linalg.norm(ranking.embeddings, axis=1), 1.0, rtol=1e-5)
    assert sorted(ranking.order) == [1, 2, 3, 5]
    assert [s.index for s in ranking.scores] == [(i, j) for i in range(2) for j in range(3)]
    assert ranking.pick(2, labelled=[0, 1, 4]) == ranking.pick(2, labelled=[4, 1, 0])
    assert set(ranking.pick(2, labelled=[0, 1, 4])) <= {2, 3, 5}


def test_maps_have_the_image_shape_with_rotations(tiny_model, lab) -> None:
    _, _, test = lab
    image = test[0][:, :100]  # not square: 90-degree rotations change the shape
    maps = uncertainty_maps(tiny_model, image, augmentations=8)
    assert set(maps) == {"mean", "entropy", "disagreement", "uncertainty"}
    for values in maps.values():
        assert values.shape == image.shape and values.dtype == np.float32
        assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0
    np.testing.assert_allclose(
        maps["uncertainty"], 0.5 * (maps["entropy"] + maps["disagreement"]), atol=1e-6
    )
    with pytest.raises(ValueError, match="augmentations"):
        uncertainty_maps(tiny_model, image, augmentations=3)


def test_tiles_find_the_degraded_quadrant(tiny_model, lab) -> None:
    _, _, test = lab
    # One image repeated 2 x 2 (normalised together, as a large image is), the lower
    # left copy degraded.
    mosaic = np.tile(test[2], (2, 2)).astype(np.float32)
    mosaic[128:, :128] = degrade(test[2])
    tiles = rank_tiles(tiny_model, mosaic, tile=128)
    assert len(tiles) == 4
    assert {(y, x, h, w) for y, x, h, w, _ in tiles} == {
        (0, 0, 128, 128),
        (0, 128, 128, 128),
        (128, 0, 128, 128),
        (128, 128, 128, 128),
    }
    assert tiles[0][:2] == (128, 0)
    scores = [t[4] for t in tiles]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
    # Tiles of a side that does not divide the image still cover it with equal sizes.
    tiles = rank_tiles(tiny_model, mosaic[:200, :230], tile=96)
    assert {(h, w) for _, _, h, w, _ in tiles} == {(96, 96)}
    covered = np.zeros((200, 230), bool)
    for y, x, h, w, _ in tiles:
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    with pytest.raises(ValueError, match="2-D image"):
        rank_tiles(tiny_model, np.stack([mosaic, mosaic]))


def test_cancel_stops_frames_and_tiles(tiny_model, lab) -> None:
    _, _, test = lab
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    generator = iter_rank_frames(tiny_model, np.stack(test[:5]), should_stop=should_stop)
    seen = []
    with pytest.raises(InferenceCancelled):
        for event in generator:
            seen.append(event)
    assert not any(isinstance(e, FrameScored) and e.frame >= 2 for e in seen)
    with pytest.raises(InferenceCancelled):
        for _ in iter_rank_tiles(tiny_model, test[0], should_stop=lambda: True):
            pass


def test_diversity_pushes_down_near_duplicates() -> None:
    scores = np.array([0.9, 0.89, 0.5, 0.1])
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]])
    assert diverse_order(scores, embeddings, diversity=0.0) == [0, 1, 2, 3]
    assert diverse_order(scores, embeddings, diversity=0.5)[:2] == [0, 2]
    # Annotated frames are left out and count as covered.
    assert diverse_order(scores, embeddings, labelled=[0], diversity=0.5)[0] == 2
    with pytest.raises(ValueError, match="diversity"):
        diverse_order(scores, embeddings, diversity=1.5)
