"""The U-Net: architecture of the lab, any input size."""

from __future__ import annotations

import pytest
import torch

from napari_unet_nuclei.nn.network import UNet, UNetConfig, build_unet


@pytest.mark.parametrize(("features", "depth"), [(4, 2), (8, 4), (4, 1), (2, 5)])
@pytest.mark.parametrize(("height", "width"), [(128, 128), (127, 301), (7, 9), (1, 1)])
def test_output_has_input_size(features: int, depth: int, height: int, width: int) -> None:
    network = build_unet(UNetConfig(features=features, depth=depth)).eval()
    with torch.no_grad():
        out = network(torch.rand(2, 1, height, width))
    assert out.shape == (2, 1, height, width)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_lab_architecture_layers() -> None:
    network = UNet(UNetConfig(features=4, depth=2))
    # Encoder widths F, 2F; bottleneck doubles to 4F; decoder halves back.
    assert [level.block[0].out_channels for level in network.encoder] == [4, 8]
    assert network.bottleneck[0].out_channels == 16
    assert [level.upsample.out_channels for level in network.decoder] == [8, 4]
    assert all(
        isinstance(up.upsample, torch.nn.ConvTranspose2d)
        and up.upsample.kernel_size == (2, 2)
        and up.upsample.stride == (2, 2)
        for up in network.decoder
    )
    # Block order: conv -> ReLU -> BatchNorm, twice.
    kinds = [type(layer).__name__ for layer in network.encoder[0].block]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d"] * 2
    assert network.head.out_channels == 1 and network.head.kernel_size == (1, 1)


def test_config_round_trip_and_validation() -> None:
    config = UNetConfig(features=8, depth=4)
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert config.size_multiple == 16
    with pytest.raises(ValueError, match="depth must be between 1 and 5"):
        UNetConfig(depth=6)
    with pytest.raises(ValueError, match="features"):
        UNetConfig(features=0)


def test_padding_does_not_change_interior_of_divisible_input() -> None:
    torch.manual_seed(0)
    network = build_unet(UNetConfig(features=4, depth=2)).eval()
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        whole = network(image)
        cropped = network(image[..., :63, :62])
    assert cropped.shape == (1, 1, 63, 62)
    # Far from the padded border, the receptive field sees the same pixels.
    assert torch.allclose(whole[..., :40, :40], cropped[..., :40, :40], atol=1e-5)
