"""Generate a small BraTS-MEN-format demo dataset from the MNI152 anatomy bundled in nilearn.

Each subject is the MNI152 2009 template warped by a random affine + smooth elastic deformation,
with four contrasts derived from its GM/WM/CSF maps, a dural-based meningioma (ET, optional
necrotic core and edema), a bias field and noise, stored in BraTS geometry (240x240x155, 1 mm,
LPS-stored affine, BraTS file names). `factors.csv` records every subject's generative factors.

    vae-dynamics demo --out results/demo/data --n-subjects 8 --seed 0
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vae_dynamics.io import write_csv
from vae_dynamics.parallel import map_in_processes

BRATS_SHAPE = (240, 240, 155)
# Marks a folder the demo generator wrote: only such a folder (or an empty one) is written into again.
DEMO_MARKER = ".vae_dynamics-demo"
# Tissue intensities per modality (relative units): csf, gm, wm, et, netc, snfh.
CONTRASTS = {
    "t1n": dict(csf=0.25, gm=0.55, wm=0.80, et=0.55, netc=0.35, snfh=0.45),
    "t1c": dict(csf=0.25, gm=0.55, wm=0.80, et=1.10, netc=0.20, snfh=0.45),
    "t2w": dict(csf=1.00, gm=0.60, wm=0.45, et=0.55, netc=0.90, snfh=0.85),
    "t2f": dict(csf=0.10, gm=0.60, wm=0.45, et=0.60, netc=0.25, snfh=0.95),
}
LABEL_NETC, LABEL_SNFH, LABEL_ET = 1, 2, 3


@dataclass(frozen=True)
class Anatomy:
    """MNI152 maps (1 mm, RAS) used as the source anatomy."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    origin: np.ndarray  # world coordinate of voxel (0, 0, 0)
    centre: np.ndarray  # world coordinate of the brain's bounding-box centre


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """Load the MNI152 template, GM/WM maps and brain mask shipped with nilearn (no network)."""
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    arrays = [
        np.asarray(img.get_fdata(), dtype=np.float32)
        for img in (
            t1_img,
            datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1),
            datasets.load_mni152_brain_mask(resolution=1),
        )
    ]
    affine = t1_img.affine
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError("expected a 1 mm RAS MNI152 template from nilearn")
    origin = affine[:3, 3].astype(np.float64)
    idx = np.argwhere(arrays[3] > 0.5)
    centre = origin + (idx.min(0) + idx.max(0)) / 2.0
    t1, gm, wm, mask = arrays
    return Anatomy(t1, gm, wm, mask, origin=origin, centre=centre)


def brats_affine(centre: np.ndarray) -> np.ndarray:
    """LPS-stored 1 mm affine (as in BraTS files) whose grid centre sits at world `centre`."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    half = (np.array(BRATS_SHAPE) - 1) / 2.0
    affine[:3, 3] = centre - affine[:3, :3] @ half
    return affine


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _hat_basis(n: int, k: int) -> np.ndarray:
    """[n, k] linear-interpolation weights from k evenly spaced knots onto n samples."""
    pos = np.linspace(0, k - 1, n)
    return np.clip(1.0 - np.abs(pos[:, None] - np.arange(k)[None, :]), 0.0, None).astype(np.float32)


def _smooth_field(rng: np.random.Generator, coarse: tuple[int, int, int], sigma: float) -> np.ndarray:
    """A smooth random field on the BraTS grid: coarse random knots, separable linear upsampling."""
    knots = rng.normal(0.0, sigma, size=coarse).astype(np.float32)
    bx, by, bz = (_hat_basis(n, k) for n, k in zip(BRATS_SHAPE, coarse))
    return np.einsum("ia,jb,kc,abc->ijk", bx, by, bz, knots, optimize=True)


def _sample_trilinear(anat: Anatomy, src: np.ndarray) -> dict[str, np.ndarray]:
    """Trilinear sampling of the MNI maps at voxel coordinates `src` [3, *BRATS_SHAPE] (zero outside)."""
    names = ("t1", "gm", "wm", "mask")
    volume = torch.from_numpy(np.stack([getattr(anat, n) for n in names]))[None]  # [1,4,X,Y,Z]
    size = torch.tensor(volume.shape[2:], dtype=torch.float32).view(3, 1, 1, 1)
    norm = 2.0 * torch.from_numpy(src) / (size - 1) - 1.0  # align_corners=True convention
    grid = norm.flip(0).permute(1, 2, 3, 0)[None]  # grid_sample wants (z, y, x) order last
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return {n: out[0, i].numpy() for i, n in enumerate(names)}


def _warp(
    anat: Anatomy, rng: np.random.Generator, affine: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Sample the MNI maps on the BraTS grid through a random affine + elastic deformation."""
    angles = rng.uniform(-6.0, 6.0, size=3)
    scale = float(rng.uniform(0.86, 1.0))  # the MNI brain is larger than average
    shift = rng.uniform(-4.0, 4.0, size=3)
    # target world w = scale * R (s - c) + c + shift  =>  s = R^T (w - c - shift) / scale + c
    inv = _rotation(angles).T / scale
    # BraTS voxel -> MNI voxel is one affine map: fold the three steps into a single matrix.
    lin = inv @ affine[:3, :3]
    offset = inv @ (affine[:3, 3] - anat.centre - shift) + anat.centre - anat.origin
    grid = np.indices(BRATS_SHAPE, dtype=np.float32).reshape(3, -1)
    src = (lin.astype(np.float32) @ grid + offset.astype(np.float32)[:, None]).reshape(3, *BRATS_SHAPE)
    for axis in range(3):  # smooth elastic displacement, a few mm
        src[axis] += _smooth_field(rng, (6, 6, 5), 2.0)
    warped = _sample_trilinear(anat, src)
    factors = dict(
        rot_x_deg=angles[0],
        rot_y_deg=angles[1],
        rot_z_deg=angles[2],
        scale=scale,
        shift_x_mm=shift[0],
        shift_y_mm=shift[1],
        shift_z_mm=shift[2],
    )
    return warped, factors


def _tumour(
    mask: np.ndarray, affine: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Label map with a dural-based meningioma: ET shell at the brain surface, optional NETC/SNFH."""
    brain = mask > 0.5
    idx = np.argwhere(brain)
    centre = (idx.min(0) + idx.max(0)) / 2.0
    while True:  # a direction above the skull base, then march to the brain surface
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        world_dir = affine[:3, :3] @ direction
        if world_dir[2] > -0.2:
            break
    steps = np.arange(0, 200, 0.5)
    ray = np.round(centre[None] + steps[:, None] * direction[None]).astype(int)
    inside = np.all((ray >= 0) & (ray < np.array(BRATS_SHAPE)), axis=1)
    ray = ray[inside]
    on_brain = brain[ray[:, 0], ray[:, 1], ray[:, 2]]
    surface = ray[np.nonzero(on_brain)[0].max()].astype(np.float64)
    radius = float(rng.uniform(8.0, 20.0))
    radii = radius * rng.uniform(0.85, 1.15, size=3)
    t_centre = surface - direction * radius * 0.4  # mostly inside the skull, attached to the dura
    has_edema = bool(rng.random() < 0.6)
    has_necrosis = bool(rng.random() < 0.35)
    edema_radius = radius * float(rng.uniform(1.5, 2.2)) if has_edema else 0.0
    necrosis_radius = radius * float(rng.uniform(0.3, 0.45)) if has_necrosis else 0.0

    reach = int(np.ceil(max(radii.max(), edema_radius))) + 2
    lo = np.maximum(np.floor(t_centre).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(t_centre).astype(int) + reach + 1, BRATS_SHAPE)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    coords = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    rel = coords - t_centre
    ell = np.sum((rel / radii) ** 2, axis=-1)
    dist = np.linalg.norm(rel, axis=-1)
    skull = np.linalg.norm(coords - centre, axis=-1) <= np.linalg.norm(surface - centre) + 2.0

    seg = np.zeros(BRATS_SHAPE, dtype=np.uint8)
    local = np.zeros(ell.shape, dtype=np.uint8)
    tumour = (ell <= 1.0) & skull
    if has_edema:
        local[(dist <= edema_radius) & brain[box] & ~tumour] = LABEL_SNFH
    local[tumour] = LABEL_ET
    if has_necrosis:
        local[(dist <= necrosis_radius) & tumour] = LABEL_NETC
    seg[box] = local
    world_centre = affine[:3, :3] @ t_centre + affine[:3, 3]
    factors = dict(
        tumour_x_mm=world_centre[0],
        tumour_y_mm=world_centre[1],
        tumour_z_mm=world_centre[2],
        tumour_radius_mm=radius,
        hemisphere="left" if world_centre[0] < 0 else "right",
        has_edema=has_edema,
        edema_radius_mm=edema_radius,
        has_necrosis=has_necrosis,
        necrosis_radius_mm=necrosis_radius,
    )
    return seg, factors


def _bias_field(rng: np.random.Generator, strength: float) -> np.ndarray:
    return np.exp(_smooth_field(rng, (3, 3, 3), strength)).astype(np.float32)


def make_subject(index: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Arrays of one synthetic subject (four modalities + seg), its affine and its factors."""
    rng = np.random.default_rng([seed, index])
    anat = load_anatomy()
    affine = brats_affine(anat.centre)
    warped, factors = _warp(anat, rng, affine)
    seg, tumour_factors = _tumour(warped["mask"], affine, rng)
    factors.update(tumour_factors)

    gm, wm = np.clip(warped["gm"], 0, 1), np.clip(warped["wm"], 0, 1)
    mask = np.clip(warped["mask"], 0, 1)
    csf = np.clip(mask - gm - wm, 0, 1)
    head = (mask > 0.5) | (seg > 0)
    enhancement = float(rng.uniform(0.9, 1.3))
    bias_strength = float(rng.uniform(0.05, 0.25))
    noise_sigma = float(rng.uniform(0.01, 0.03))
    factors.update(enhancement=enhancement, bias_strength=bias_strength, noise_sigma=noise_sigma)

    volumes = {}
    for name, c in CONTRASTS.items():
        img = c["csf"] * csf + c["gm"] * gm + c["wm"] * wm
        if name.startswith("t1"):  # the template's own T1 texture adds realistic detail
            img = 0.6 * img + 0.4 * np.clip(warped["t1"], 0, 1) * c["wm"]
        et = c["et"] * (enhancement if name == "t1c" else 1.0)
        texture = 1.0 + 0.05 * rng.standard_normal(seg.shape).astype(np.float32)
        for label, value in ((LABEL_ET, et), (LABEL_NETC, c["netc"]), (LABEL_SNFH, c["snfh"])):
            region = seg == label
            img[region] = value * texture[region]
        img = img * _bias_field(rng, bias_strength)
        img = np.abs(img + noise_sigma * rng.standard_normal(img.shape).astype(np.float32))
        img[~head] = 0.0
        gain = float(rng.uniform(500.0, 3000.0))
        volumes[name] = np.round(img * gain).astype(np.int16)
    factors["et_voxels"] = int(np.sum(seg == LABEL_ET))
    factors["snfh_voxels"] = int(np.sum(seg == LABEL_SNFH))
    factors["netc_voxels"] = int(np.sum(seg == LABEL_NETC))
    volumes["seg"] = seg
    return volumes, affine, factors


def subject_id(index: int) -> str:
    return f"BraTS-MEN-{index:05d}-000"


def _write_subject(out_dir: str | os.PathLike[str], index: int, seed: int) -> dict:
    """Write one subject folder (atomically: built under a temporary name, then renamed). Only `generate`
    calls it, after it has checked that `out_dir` is empty or a demo folder: it replaces a subject folder
    of the same name."""
    out_dir = Path(out_dir)
    sid = subject_id(index)
    volumes, affine, factors = make_subject(index, seed)
    tmp = out_dir / f".{sid}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key, arr in volumes.items():
        img = nib.Nifti1Image(arr, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        nib.save(img, tmp / f"{sid}-{key}.nii.gz")
    final = out_dir / sid
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return {"subject_id": sid, **factors}


def generate(
    out_dir: str | os.PathLike[str], n_subjects: int, seed: int = 0, workers: int = 1
) -> pd.DataFrame:
    """Write `n_subjects` demo subjects and `factors.csv` into `out_dir`; return the factors."""
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    out_dir = Path(out_dir)
    marker = out_dir / DEMO_MARKER
    if out_dir.is_dir() and any(out_dir.iterdir()) and not marker.is_file():
        shown = ", ".join(sorted(p.name for p in out_dir.iterdir())[:5])
        raise FileExistsError(
            f"demo output {out_dir} holds files that are not an earlier demo's ({shown}): subject folders of "
            "the same name would be replaced; choose an empty or new folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()  # first: an interrupted or changed generation may rewrite this folder
    load_anatomy()  # load once before forking workers
    rows = map_in_processes(
        _write_subject, [out_dir] * n_subjects, range(n_subjects), [seed] * n_subjects, workers=workers
    )
    factors = pd.DataFrame(rows)
    write_csv(factors, out_dir / "factors.csv")
    return factors
