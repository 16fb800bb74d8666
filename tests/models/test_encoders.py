import pytest
import torch

from pipelines.errors import CmiError
from pipelines.models.encoders import PixelNormalize, ResNet18, SmallCNN, build_encoder
from pipelines.models.net import initialize
from pipelines.shards import ModalitySpec


def _init(module, seed=0):
    initialize(module, torch.Generator().manual_seed(seed))
    return module


def test_uint8_pixels_are_scaled_and_imagenet_normalised():
    x = torch.tensor([[[[255, 0, 128]]]], dtype=torch.uint8)          # (1, H=1, W=1, RGB)
    out = PixelNormalize()(x)
    assert out.shape == (1, 3, 1, 1) and out.dtype == torch.float32
    # (255/255 - 0.485)/0.229, (0 - 0.456)/0.224, (128/255 - 0.406)/0.225
    expected = torch.tensor([2.2489083, -2.0357143, 0.4264924])
    assert torch.allclose(out.flatten(), expected, atol=1e-6)


def test_frames_are_folded_into_the_batch_and_mean_pooled_over_time():
    spec = ModalitySpec("visual", "frames", (3, 16, 16, 3), "uint8")
    enc = _init(build_encoder(spec, "small", 8)).eval()
    x = torch.randint(0, 256, (2, 3, 16, 16, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        out = enc(x)
        per_frame = torch.stack([enc.cnn(enc.normalize(x[:, k])) for k in range(3)], dim=1)
    assert out.shape == (2, 8)
    assert torch.allclose(out, per_frame.mean(1), atol=1e-5)


def test_float_pixels_and_spectrograms_are_taken_as_given():
    image = _init(build_encoder(ModalitySpec("img", "image", (16, 16, 3), "float32"), "small", 8)).eval()
    assert image.normalize is None
    x = torch.randn(2, 16, 16, 3)
    with torch.no_grad():
        assert torch.allclose(image(x), image.cnn(x.permute(0, 3, 1, 2)), atol=1e-6)
    spec = _init(build_encoder(ModalitySpec("a", "spectrogram", (16, 20), "float32"), "small", 8)).eval()
    s = torch.randn(2, 16, 20)
    with torch.no_grad():
        assert torch.allclose(spec(s), spec.cnn(s.unsqueeze(1)), atol=1e-6)


def test_embedding_encoder_accepts_vectors_and_token_sequences():
    vec = _init(build_encoder(ModalitySpec("t", "embedding", (10,), "float32"), "small", 6))
    assert vec(torch.randn(4, 10)).shape == (4, 6)
    seq = _init(build_encoder(ModalitySpec("t", "embedding", (5, 10), "float32"), "resnet18", 6))
    x = torch.randn(4, 5, 10)
    assert torch.allclose(seq(x), seq.mlp(x).mean(1))


def test_resnet18_has_the_reference_parameter_count():
    with torch.device("meta"):      # shapes only, no weights
        rgb, mono, small_d = ResNet18(3, 512, (224, 224)), ResNet18(1, 512, (257, 188)), ResNet18(3, 128, (224, 224))
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in its 1000-class fc layer.
    assert sum(p.numel() for p in rgb.parameters()) == 11_689_512 - 513_000
    # one input channel: the 7x7 stem loses 2 * 64 * 49 = 6,272 weights
    assert sum(p.numel() for p in mono.parameters()) == 11_689_512 - 513_000 - 6_272
    # d != 512 adds a 512 -> d linear layer
    assert sum(p.numel() for p in small_d.parameters()) == 11_176_512 + 512 * 128 + 128


def test_nominal_strides_on_real_sizes_and_fitted_strides_on_tiny_inputs():
    with torch.device("meta"):
        big, resnet = SmallCNN(1, 16, (257, 137)), ResNet18(1, 512, (257, 137))
    assert [layer[0].stride for layer in list(big)[:4]] == [(4, 4), (2, 2), (2, 2), (2, 2)]
    assert resnet.stem[0].stride == (2, 2) and resnet.pool.stride == (2, 2)
    assert [stage[0].conv1.stride for stage in resnet.stages] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    tiny = SmallCNN(1, 16, (8, 12))
    # 8x12 -> 2x3 after the stem; further strides only where 2+ positions remain
    assert [layer[0].stride for layer in list(tiny)[:4]] == [(4, 4), (1, 2), (1, 1), (1, 1)]
    # a one-sample training batch works: BatchNorm never sees a 1x1 map
    for net in (_init(tiny).train(), _init(ResNet18(1, 8, (8, 12))).train()):
        assert net(torch.randn(1, 1, 8, 12)).shape == (1, net.out_dim)


@pytest.mark.parametrize("kind,shape", [("spectrogram", (8, 12, 1)), ("frames", (8, 8, 3)), ("image", (8, 8, 4)),
                                        ("embedding", (2, 3, 4))])
def test_unusable_shapes_are_user_errors(kind, shape):
    with pytest.raises(CmiError, match="cmi prepare"):
        build_encoder(ModalitySpec("m", kind, shape, "float32"), "small", 8)


def test_unknown_encoder_is_a_user_error():
    with pytest.raises(CmiError, match="small, resnet18"):
        build_encoder(ModalitySpec("m", "embedding", (4,), "float32"), "vgg", 8)
