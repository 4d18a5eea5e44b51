"""The detector networks: a classifier on one layer's activations of model 2.

* conv layers (C x H x W): a CIFAR-style ResNet from the model zoo built with
  ``in_channels=C``, fed the activation resized bilinearly to the input size
  (paper 2: ResNet-18 at 32x32; the offline default is a half-width ResNet-20,
  which trains in well under a minute on CPU for Tiny-10 on digits);
* token layers (T x D): a few timm ViT blocks on the tokens, classifying from CLS
  (paper 2: ViT-Tiny blocks).

Both see per-channel standardised activations (statistics of the training split,
stored as buffers): layers differ in scale by orders of magnitude, and a fixed
affine map changes nothing about what is detectable.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .. import models
from ..errors import ConfigError
from ..models.fold import memory_format_of
from .energy import energy, joint_energy
from .settings import DetectorConfig


class TokenClassifier(nn.Module):
    """A few pre-norm ViT blocks (timm) on the token sequence, classifying from the CLS token."""

    def __init__(self, dim: int, num_classes: int, depth: int = 2, heads: int | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        from timm.models.vision_transformer import Block

        if heads is None:
            heads = dim // 64 if dim % 64 == 0 and dim >= 64 else 1
        if dim % heads:
            raise ConfigError(f"ood.detector.tokens.heads={heads} must divide the token width {dim}")
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(h))[:, 0])


# oneDNN's SIMD width in floats on AVX-512 (16; AVX2's is 8): the bad shapes have fewer input channels
_NARROW_INPUT = 16


class NCHWStridedPointwiseConv(nn.Conv2d):
    """A 1x1 strided convolution that computes in NCHW on CPU, inside a channels-last network.

    oneDNN's channels-last weight gradient of a 1x1, stride-2 convolution with fewer input
    channels than a SIMD register holds writes past its buffer: glibc aborts later with
    "corrupted double-linked list" or the process segfaults (torch 2.14 CPU, AVX2: in_channels
    2-7, every size and batch tried; 3x3 and stride-1 convolutions are unaffected). A ResNet's
    projection shortcut is that shape in a narrow network. NCHW computes the same values; the
    output goes back to the input's layout, since a mixed-layout convolution downstream has its
    own crash in backward (pytorch/pytorch#136348).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        layout = memory_format_of(x)
        # Plain strides explicitly, by a copy: .contiguous() keeps channels-last strides where they
        # also pass as contiguous (a 1x1 kernel, a 1x1 activation), and oneDNN would take its
        # channels-last path from them.
        y = self._conv_forward(x.clone(memory_format=torch.contiguous_format),
                               self.weight.clone(memory_format=torch.contiguous_format), self.bias)
        return y.contiguous(memory_format=layout)


def guard_strided_pointwise_convs(net: nn.Module) -> int:
    """Make ``net``'s narrow 1x1 strided convolutions NCHWStridedPointwiseConv, in place (same
    parameters and state-dict keys); returns how many."""
    n = 0
    for m in net.modules():
        if type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride != (1, 1) \
                and m.in_channels < _NARROW_INPUT:
            m.__class__ = NCHWStridedPointwiseConv
            n += 1
    return n


class ActivationDetector(nn.Module):
    """Classifier on a layer's activations: standardise -> (resize) -> backbone -> logits."""

    def __init__(self, act_shape: tuple[int, ...], num_classes: int, cfg: DetectorConfig,
                 image_size: tuple[int, int] = (32, 32), multilabel: bool = False):
        super().__init__()
        self.act_shape = tuple(int(s) for s in act_shape)
        self.multilabel = multilabel  # a head of independent labels: BCE, joint energy, sigmoid > 0.5
        if len(self.act_shape) == 3:
            self.kind = "conv"
            c = self.act_shape[0]
            self.size = (cfg.input_size,) * 2 if cfg.input_size else tuple(image_size)
            try:
                self.backbone: nn.Module = models.build(cfg.conv_arch, num_classes, in_channels=c,
                                                        **dict(cfg.conv_options))
            except ValueError as e:
                raise ConfigError(f"cannot build the OOD detector {cfg.conv_arch}: {e}") from None
        elif len(self.act_shape) == 2:
            self.kind = "tokens"
            c = self.act_shape[1]
            self.backbone = TokenClassifier(c, num_classes, cfg.token_depth, cfg.token_heads, cfg.token_mlp_ratio)
        else:
            raise ConfigError(f"no OOD detector for activations of shape {self.act_shape}: expected "
                              f"C x H x W (conv) or T x D (tokens)")
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("std", torch.ones(c))
        self.layout = torch.contiguous_format
        if self.kind == "conv":
            # channels-last, oneDNN's fast layout on CPU, to train and to score
            # (bench/ood_detector_layout.py), with the one kernel that is unsafe in it kept NCHW
            self.backbone.to(memory_format=torch.channels_last)
            guard_strided_pointwise_convs(self.backbone)
            self.layout = torch.channels_last

    @torch.no_grad()
    def set_standardization(self, acts: torch.Tensor) -> None:
        """Per-channel mean/std from a sample of activations (N x C x H x W or N x T x D)."""
        rows = acts.float().transpose(0, 1).reshape(acts.shape[1], -1) if self.kind == "conv" \
            else acts.float().reshape(-1, acts.shape[-1]).T
        self.mean.copy_(rows.mean(1))
        # dead (constant) channels: unit scale, so they stay 0 instead of blowing up
        std = rows.std(1)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def energy(self, logits: torch.Tensor) -> torch.Tensor:
        """The detector's energy per sample: free energy (softmax head) or joint energy (multi-label)."""
        return joint_energy(logits) if self.multilabel else energy(logits)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted classes (N), or predicted labels (N x K booleans) of a multi-label head."""
        return logits > 0 if self.multilabel else logits.argmax(1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # One layout, whatever model 2 runs in (NCHW or channels-last): the backbone's own. A
        # mixed-layout oneDNN convolution's backward pass can segfault on CPU
        # (pytorch/pytorch#136348). Elementwise ops and the resize keep the layout.
        if self.kind == "conv":
            h = h.float().contiguous(memory_format=self.layout)
            h = (h - self.mean[:, None, None]) / self.std[:, None, None]
            if tuple(h.shape[-2:]) != self.size:  # paper 2: bilinear resize to the input size
                h = nn.functional.interpolate(h, size=self.size, mode="bilinear", align_corners=False)
        else:
            h = (h.float() - self.mean) / self.std
        return self.backbone(h)


@torch.no_grad()
def layer_activations(model2: models.StitchableNetwork, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Model 2's ``layer`` activations for inputs ``x``, as float32 (what a detector sees)."""
    return model2.forward_to(x, layer).float()


@torch.no_grad()
def detector_outputs(detector: ActivationDetector, acts: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies and predicted classes of the detector over batches of activations (CPU tensors)."""
    detector.eval()
    es, preds = [], []
    for h in acts:
        logits = detector(h)
        es.append(detector.energy(logits).cpu())
        preds.append(detector.predict(logits).cpu())
    return torch.cat(es), torch.cat(preds)


def prediction_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of predictions against labels: top-1, or the mean per-label accuracy (N x K)."""
    if pred.dim() == 2:
        return float((pred == y.bool()).float().mean())
    return float((pred == y).float().mean())
