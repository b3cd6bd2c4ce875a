"""Architectures: registry, output shapes, parameter counts (vs the reference networks), bad arguments."""

from __future__ import annotations

import pytest
import torch

from cvplatform.errors import ModelError
from cvplatform.models import available_models, build_model, count_parameters, resolve_model_kwargs


def test_registry_lists_the_three_families():
    assert available_models() == ["mobilenet_v2", "resnet", "small_cnn"]


@pytest.mark.parametrize(
    ("arch", "kwargs", "size"),
    [
        ("small_cnn", {"width": 8}, 32),
        ("small_cnn", {"width": 4, "stages": 2}, 17),  # odd size: ceil-mode pooling keeps it working
        ("resnet", {"depth": 10, "width": 8}, 32),
        ("resnet", {"blocks": [1, 2], "width": 8}, 24),
        ("resnet", {"depth": 10, "width": 8, "stem": "imagenet"}, 64),
        ("mobilenet_v2", {"width_mult": 0.25}, 32),
        ("mobilenet_v2", {"width_mult": 0.25, "small_input": False}, 64),
    ],
)
def test_forward_shape(arch, kwargs, size):
    net = build_model(arch, 7, **kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_small_cnn_parameter_count_matches_its_layers():
    # stage i: conv3x3(c_in, c) + BN(c) + conv3x3(c, c) + BN(c), c = width * 2**i; head: Linear(c_last, k)
    w, k = 8, 10
    expected, c_in = 0, 3
    for i in range(3):
        c = w * 2**i
        expected += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
        c_in = c
    expected += c_in * k + k
    assert count_parameters(build_model("small_cnn", k, width=w)) == expected == 18626


@pytest.mark.parametrize(("depth", "expected"), [(18, 11_689_512), (34, 21_797_672)])
def test_resnet_parameter_count_equals_reference(depth, expected):
    # the published ResNet-18/34 (ImageNet stem, width 64, 1000 classes)
    net = build_model("resnet", 1000, depth=depth, stem="imagenet", width=64)
    assert count_parameters(net) == expected


def test_resnet_width_and_blocks_change_size():
    small = count_parameters(build_model("resnet", 10, blocks=[1, 1], width=8))
    wider = count_parameters(build_model("resnet", 10, blocks=[1, 1], width=16))
    deeper = count_parameters(build_model("resnet", 10, blocks=[2, 2], width=8))
    assert small < wider and small < deeper
    # blocks wins over depth
    assert resolve_model_kwargs("resnet", depth=34, blocks=[1, 1])["blocks"] == [1, 1]


def test_mobilenet_v2_parameter_count_equals_reference():
    assert count_parameters(build_model("mobilenet_v2", 1000, small_input=False)) == 3_504_872


def test_mobilenet_uses_depthwise_convs_and_width_mult():
    net = build_model("mobilenet_v2", 10, width_mult=0.5)
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert count_parameters(net) < count_parameters(build_model("mobilenet_v2", 10, width_mult=1.0))


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ModelError) as ei:
        build_model("vgg99", 10)
    msg = str(ei.value)
    assert "vgg99" in msg and "small_cnn" in msg and "resnet" in msg and "mobilenet_v2" in msg


def test_bad_arguments_name_the_key_and_list_valid_ones():
    with pytest.raises(ModelError) as ei:
        build_model("resnet", 10, depht=18)
    assert "depht" in str(ei.value) and "depth" in str(ei.value) and "blocks" in str(ei.value)
    with pytest.raises(ModelError, match="depth"):
        build_model("resnet", 10, depth=50)
    with pytest.raises(ModelError, match="blocks"):
        build_model("resnet", 10, blocks=[])
    with pytest.raises(ModelError, match="num_classes"):
        build_model("small_cnn", 0)  # one output unit is valid (a regression head); zero is not


def test_resolved_kwargs_are_primitive_and_complete():
    kw = resolve_model_kwargs("mobilenet_v2", width_mult=0.5)
    assert kw == {"width_mult": 0.5, "small_input": True, "dropout": 0.2, "in_channels": 3}
