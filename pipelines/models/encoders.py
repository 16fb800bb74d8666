"""Modality encoders E_m: payload of one modality -> feature h_m in R^d.

The encoder is chosen from :attr:`ModalitySpec.kind`:

- ``spectrogram`` (F, T) float: 2D CNN on a 1-channel image, taken as given (no scaling).
- ``frames`` (k, S, S, 3): per-frame 2D CNN (the k frames are folded into the batch dimension)
  followed by temporal mean pooling.
- ``image`` (S, S, 3): 2D CNN.
- ``embedding`` (D,) or (L, D): MLP on the last dimension, mean over any leading (token) dimension.
- ``vector`` (D,) float (a numeric array per sample): the same MLP.
- ``sequence`` (L, C + 1) float (a numeric series per sample, its last channel the presence mask,
  1 on real time steps and 0 on padding): a temporal CNN over the L steps whose hidden sequence is
  re-masked after every layer, then the mean over the real steps only (masked mean pooling), so
  padding changes nothing.

Arrays are taken as given (no scaling): standardise them before writing the files if their
channels have very different ranges. ``encoder`` (small / resnet18) picks the 2D CNN backbone;
embeddings, vectors and sequences always get the MLP / the temporal CNN.

uint8 pixels are scaled to [0, 1] and ImageNet-normalised inside the model; float pixel payloads are
taken as given. Two CNN backbones: ``small`` (4 strided conv-BN-ReLU layers, widths 16-32-64-d, a
stride-4 5x5 first conv that downsamples early, global average pooling; CPU-friendly) and
``resnet18`` (BasicBlock x [2, 2, 2, 2], widths 64-512, the paper's backbone trained from scratch;
its stem takes 1 channel for spectrograms; a linear 512 -> d is added when d != 512).

Every stride is chosen at build time from the spec's spatial size: a stride only applies along a
dimension whose output keeps at least 2 positions. Realistic inputs (tens of pixels and more) get
the nominal architecture; tiny test inputs never shrink to a 1x1 map, where BatchNorm cannot
normalise a one-sample batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipelines.errors import CmiError
from pipelines.shards import ModalitySpec

ENCODERS = ("small", "resnet18")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_WIDTHS = (16, 32, 64)
#: the temporal CNN's layers before the last (out_dim wide): (width, kernel, nominal stride)
SEQUENCE_LAYERS = ((32, 5, 1), (64, 5, 2))
SEQUENCE_LAST = (3, 2)  # kernel, nominal stride of the last layer
RESNET18_WIDTHS = (64, 128, 256, 512)

Size2 = tuple[int, int]


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _fit_stride_1d(n: int, stride: int, kernel: int, padding: int) -> int:
    """The largest stride <= ``stride`` (halving) whose output keeps >= 2 of ``n`` positions."""
    while stride > 1 and _out_size(n, kernel, stride, padding) < 2:
        stride //= 2
    return stride


def _fit_stride(size: Size2, stride: int, kernel: int, padding: int) -> Size2:
    """Per dimension, the largest stride <= ``stride`` (halving) whose output keeps >= 2 positions."""
    return _fit_stride_1d(size[0], stride, kernel, padding), _fit_stride_1d(size[1], stride, kernel, padding)


def _after(size: Size2, kernel: int, stride: Size2, padding: int) -> Size2:
    return _out_size(size[0], kernel, stride[0], padding), _out_size(size[1], kernel, stride[1], padding)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: Size2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Sequential):
    """conv5x5/4 -> conv3x3/2 x3 (widths 16-32-64-out_dim), BatchNorm+ReLU, global average pooling."""

    def __init__(self, in_channels: int, out_dim: int, size: Size2):
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate((*SMALL_WIDTHS, out_dim)):
            kernel, stride = (5, 4) if i == 0 else (3, 2)
            fitted = _fit_stride(size, stride, kernel, kernel // 2)
            layers.append(conv_bn_relu(cin, cout, kernel, fitted))
            size = _after(size, kernel, fitted, kernel // 2)
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_dim = out_dim


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: Size2):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != (1, 1) or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 trunk (no classifier): 7x7/2 stem, 3x3/2 max-pool, BasicBlock x [2, 2, 2, 2],
    global average pooling -> 512 features (then a linear to ``out_dim`` when it differs)."""

    def __init__(self, in_channels: int, out_dim: int, size: Size2):
        super().__init__()
        stride = _fit_stride(size, 2, 7, 3)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=stride, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        size = _after(size, 7, stride, 3)
        stride = _fit_stride(size, 2, 3, 1)
        self.pool = nn.MaxPool2d(3, stride=stride, padding=1)
        size = _after(size, 3, stride, 1)
        stages: list[nn.Module] = []
        cin = 64
        for i, cout in enumerate(RESNET18_WIDTHS):
            stride = (1, 1) if i == 0 else _fit_stride(size, 2, 3, 1)
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, (1, 1))))
            size = _after(size, 3, stride, 1)
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.project = nn.Identity() if out_dim == cin else nn.Linear(cin, out_dim)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.head(self.stages(self.pool(self.stem(x)))))


def _backbone(encoder: str, in_channels: int, out_dim: int, size: Size2) -> nn.Module:
    if encoder == "small":
        return SmallCNN(in_channels, out_dim, size)
    return ResNet18(in_channels, out_dim, size)


class PixelNormalize(nn.Module):
    """uint8 (..., H, W, 3) pixels -> float (..., 3, H, W): x/255, then ImageNet mean/std."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.empty(3), persistent=False)
        self.register_buffer("shift", torch.empty(3), persistent=False)
        self.reset_constants()

    @torch.no_grad()
    def reset_constants(self) -> None:
        # one fused multiply-add: (x/255 - mean)/std = x * scale + shift
        if self.scale.is_meta:
            return
        std = torch.tensor(IMAGENET_STD, device=self.scale.device)
        mean = torch.tensor(IMAGENET_MEAN, device=self.scale.device)
        self.scale.copy_(1.0 / (255.0 * std))
        self.shift.copy_(-mean / std)

    def forward(self, x: Tensor) -> Tensor:
        # normalise in the stored (..., H, W, 3) layout (contiguous, ~4x faster than per-plane),
        # then view it channels-first: a channels-last tensor, which CPU convolutions prefer
        return torch.addcmul(self.shift, x.float(), self.scale).movedim(-1, -3)


class SpectrogramEncoder(nn.Module):
    """(B, F, T) float -> (B, d): 2D CNN on one channel."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.cnn = backbone

    def forward(self, x: Tensor) -> Tensor:
        # a channels-last view (N, 1, F, T): CPU convolutions then run in NHWC, about 2x faster here
        return self.cnn(x.float().unsqueeze(-1).movedim(-1, 1))


class PixelEncoder(nn.Module):
    """(B, S, S, 3) images or (B, k, S, S, 3) frames -> (B, d). Frames are folded into the batch
    (one CNN call for all B*k frames), then mean-pooled over time."""

    def __init__(self, backbone: nn.Module, frames: bool, uint8: bool):
        super().__init__()
        self.cnn = backbone
        self.frames = frames
        self.normalize = PixelNormalize() if uint8 else None

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        if self.frames:
            x = x.flatten(0, 1)
        x = self.normalize(x) if self.normalize is not None else x.movedim(-1, -3).float()
        h = self.cnn(x)
        return h.view(batch, -1, h.shape[-1]).mean(1) if self.frames else h


class EmbeddingEncoder(nn.Module):
    """(B, D) or (B, L, D) precomputed embeddings -> (B, d): Linear-ReLU-Linear-ReLU on the last
    dimension, mean over the token dimension when there is one."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        h = self.mlp(x.float())
        return h.flatten(1, -2).mean(1) if h.dim() > 2 else h


class SequenceEncoder(nn.Module):
    """(B, L, C + 1) sequences whose last channel is the presence mask -> (B, d).

    A temporal CNN: conv-ReLU layers over time (widths 32-64-d, kernels 5-5-3, strides 1-2-2, a
    stride only where the spec's length keeps >= 2 positions, "same" zero padding), written as
    (k x 1) Conv2d layers over a (B, C, L, 1) map. The input is multiplied by its mask, every
    layer's output by the mask downsampled alike (``mask[::stride]``: an output step is real when
    the step at its centre is), and the last layer's output is averaged over the real steps only.
    Padded steps are therefore zeros at every layer, exactly like the convolutions' own zero
    padding past the end: a sequence gives the same output whatever padding follows it. No
    normalisation layer (BatchNorm statistics would see the padding)."""

    def __init__(self, channels: int, out_dim: int, length: int):
        super().__init__()
        layers, strides = [], []
        cin = channels
        for cout, kernel, stride in (*SEQUENCE_LAYERS, (out_dim, *SEQUENCE_LAST)):
            stride = _fit_stride_1d(length, stride, kernel, kernel // 2)
            layers.append(nn.Conv2d(cin, cout, (kernel, 1), stride=(stride, 1), padding=(kernel // 2, 0)))
            strides.append(stride)
            length = _out_size(length, kernel, stride, kernel // 2)
            cin = cout
        self.convs = nn.ModuleList(layers)
        self.strides = tuple(strides)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        mask = (x[..., -1:] > 0.5).to(x.dtype).movedim(-1, 1).unsqueeze(-1)   # (B, 1, L, 1)
        h = x[..., :-1].movedim(-1, 1).unsqueeze(-1) * mask                   # (B, C, L, 1)
        for conv, stride in zip(self.convs, self.strides):
            mask = mask[:, :, ::stride]
            h = torch.relu(conv(h)) * mask
        return h.sum((2, 3)) / mask.sum((2, 3)).clamp_min(1.0)


def build_encoder(spec: ModalitySpec, encoder: str, embed_dim: int) -> nn.Module:
    """The encoder E_m for one modality spec (see the module docstring)."""
    if encoder not in ENCODERS:
        raise CmiError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)} (model.encoder).")
    shape = spec.shape
    expected = {"spectrogram": 2, "frames": 4, "image": 3, "vector": 1, "sequence": 2}
    if spec.kind in expected and len(shape) != expected[spec.kind]:
        raise CmiError(
            f"modality {spec.name!r} of kind {spec.kind} has shape {shape}; expected {expected[spec.kind]} "
            "dimensions ((F, T) spectrogram, (k, S, S, 3) frames, (S, S, 3) image, (D,) vector, (L, C + 1) "
            "sequence). Re-create the dataset with `cmi prepare ... --force`."
        )
    if spec.kind == "sequence" and shape[-1] < 2:
        raise CmiError(f"modality {spec.name!r}: a sequence payload is (L, C + 1), at least one channel and the "
                       f"presence mask, got shape {shape}; re-create the dataset with `cmi prepare ... --force`.")
    if spec.kind in ("frames", "image") and shape[-1] != 3:
        raise CmiError(f"modality {spec.name!r}: pixel payloads must end in 3 RGB channels, got shape {shape}; "
                       "re-create the dataset with `cmi prepare ... --force`.")
    if spec.kind == "spectrogram":
        return SpectrogramEncoder(_backbone(encoder, 1, embed_dim, (shape[0], shape[1])))
    if spec.kind in ("frames", "image"):
        backbone = _backbone(encoder, 3, embed_dim, (shape[-3], shape[-2]))
        return PixelEncoder(backbone, frames=spec.kind == "frames", uint8=spec.dtype == "uint8")
    if spec.kind == "sequence":
        return SequenceEncoder(shape[1] - 1, embed_dim, shape[0])
    if spec.kind == "vector":
        return EmbeddingEncoder(shape[0], embed_dim)
    if len(shape) not in (1, 2):
        raise CmiError(f"modality {spec.name!r}: embedding payloads must be (D,) or (L, D), got shape {shape}; "
                       "re-create the dataset with `cmi prepare ... --force`.")
    return EmbeddingEncoder(shape[-1], embed_dim)
