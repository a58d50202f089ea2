"""The deterministic MONAI preprocessing of SPEC §3, in one readable pipeline.

Portable: it imports only torch and MONAI at run time, so that an exported model (a MONAI bundle,
vae_dynamics/bundle) carries this very file as its preprocessing."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    Spacingd,
)

if TYPE_CHECKING:
    from vae_dynamics.config.schema import DataConfig

log = logging.getLogger(__name__)

SEG_KEY = (
    "seg"  # vae_dynamics.data.SEG_KEY (a test holds them equal): this file imports nothing of the package
)

FOREGROUND_MARGIN_MM = 2
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's world convention


class ForegroundMaskd(MapTransform):
    """Add `mask_key` = (any image channel non-zero) OR (seg > 0), the foreground to crop to; without a
    seg (inference on new scans) the non-zero image alone."""

    def __init__(self, image_key: str, seg_key: str, mask_key: str) -> None:
        super().__init__([image_key, seg_key], allow_missing_keys=True)
        self.image_key, self.seg_key, self.mask_key = image_key, seg_key, mask_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        mask = (d[self.image_key] != 0).any(dim=0, keepdim=True)
        if self.seg_key in d:
            mask = mask | (d[self.seg_key] > 0)
        d[self.mask_key] = mask
        return d


class WarnIfLargerThanFovd(MapTransform):
    """Warn (naming the subject) when the foreground is larger than the fixed field of view."""

    def __init__(self, key: str, fov_voxels: Sequence[int]) -> None:
        super().__init__([key])
        self.key, self.fov = key, tuple(int(v) for v in fov_voxels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping:
        shape = tuple(data[self.key].shape[1:])
        if any(s > f for s, f in zip(shape, self.fov)):
            log.warning(
                "subject %s: foreground %s voxels exceeds the %s field of view; tissue will be cut",
                data.get("subject_id", "?"),
                shape,
                self.fov,
            )
        return data


class RobustScaleIntensityd(MapTransform):
    """Per channel: divide by the `percentile` of non-zero voxels and clip to [0, 1]; background stays 0.

    With `scale_key`, the divisors are kept there ([channels], float32): inference multiplies a
    reconstruction by them to return to the scan's intensity units."""

    def __init__(self, keys: KeysCollection, percentile: float, scale_key: str | None = None) -> None:
        super().__init__(keys)
        self.q = percentile / 100.0
        self.scale_key = scale_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).float().clamp_min(0.0)
            out = torch.zeros_like(image)
            scale = torch.ones(image.shape[0])
            for c in range(image.shape[0]):
                brain = image[c] > 0
                if brain.any():
                    values = image[c][brain]
                    if values.numel() > 2**24:  # torch.quantile's input limit; a subsample is enough
                        values = values[:: values.numel() // 2**23 + 1]
                    hi = torch.quantile(values, self.q).clamp_min(torch.finfo(torch.float32).tiny)
                    out[c] = (image[c] / hi).clamp_(0.0, 1.0)
                    scale[c] = float(hi)
            d[key] = out
            if self.scale_key is not None:
                d[self.scale_key] = scale
        return d


def build_transforms(
    modalities: Sequence[str],
    roi_size: Sequence[int],
    spacing: Sequence[float],
    orientation: str = "RAS",
    fov_mm: float = 192.0,
    intensity_percentile: float = 99.5,
    invertible: bool = False,
) -> Compose:
    """NIfTI files -> {"image": float32 [4,*roi] in [0,1], "seg": uint8 [1,*roi]} (SPEC §3).

    seg is optional: an item without a "seg" file (inference on new scans) is cropped to its non-zero
    image. `invertible` keeps the image a MetaTensor that records every geometric step, so that
    `Compose.inverse` maps a [4,*roi] volume back to the scan's own grid and affine, and keeps the
    intensity divisors as "intensity_scale"; the tensors are the same either way.
    """
    modalities = list(modalities)
    fov_voxels = [round(fov_mm / s) for s in spacing]
    seg: dict[str, Any] = dict(keys=SEG_KEY, allow_missing_keys=True)
    both: dict[str, Any] = dict(keys=["image", SEG_KEY], allow_missing_keys=True)
    return Compose(
        [
            LoadImaged(keys=[*modalities, SEG_KEY], image_only=True, allow_missing_keys=True),
            EnsureChannelFirstd(keys=[*modalities, SEG_KEY], allow_missing_keys=True),
            # One image of 4 channels before any resampling (the files share grid and affine, checked by
            # indexing), so that its geometric steps form one invertible chain.
            ConcatItemsd(keys=modalities, name="image", dim=0),
            DeleteItemsd(keys=modalities),
            Orientationd(**both, axcodes=orientation, labels=RAS_LABELS),
            Spacingd(keys="image", pixdim=spacing, mode="bilinear"),
            Spacingd(**seg, pixdim=spacing, mode="nearest"),
            ForegroundMaskd("image", SEG_KEY, "foreground"),
            CropForegroundd(
                **both,
                source_key="foreground",
                margin=FOREGROUND_MARGIN_MM,
                allow_smaller=True,
                start_coord_key=None,
                end_coord_key=None,
            ),
            DeleteItemsd(keys="foreground"),
            WarnIfLargerThanFovd("image", fov_voxels),
            # A fixed physical field of view centred on the foreground: the same mm per voxel for all.
            ResizeWithPadOrCropd(**both, spatial_size=fov_voxels),
            Resized(keys="image", spatial_size=roi_size, mode="area"),
            Resized(**seg, spatial_size=roi_size, mode="nearest"),
            RobustScaleIntensityd(
                keys="image",
                percentile=intensity_percentile,
                scale_key="intensity_scale" if invertible else None,
            ),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=invertible),
            EnsureTyped(**seg, dtype=torch.uint8, track_meta=False),
        ]
    )


def transforms_from_config(data_cfg: DataConfig, invertible: bool = False) -> Compose:
    """build_transforms with the keys of a validated config's `data` section."""
    return build_transforms(
        invertible=invertible,
        modalities=data_cfg.modalities,
        roi_size=data_cfg.roi_size,
        spacing=data_cfg.spacing,
        orientation=data_cfg.orientation,
        fov_mm=data_cfg.fov_mm,
        intensity_percentile=data_cfg.intensity_percentile,
    )
