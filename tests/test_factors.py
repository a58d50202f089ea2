"""Subject factors measured from the demo's segmentations, joined with the generator's ground truth."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from vae_dynamics.data.index import index_subjects
from vae_dynamics.evaluation.factors import subject_factors


@pytest.fixture(scope="module")
def factors_table(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("factors")
    index_subjects(demo_root, out / "index", progress=False)
    table = subject_factors(
        out / "index" / "subjects.csv", out / "factors.csv", demo_root / "factors.csv", workers=2
    )
    return table, out


def test_volumes_and_centroid_match_a_direct_count(factors_table, demo_root):
    table, out = factors_table
    assert pd.read_csv(out / "factors.csv")["subject_id"].tolist() == table["subject_id"].tolist()
    for row in table.itertuples():
        img = nib.load(demo_root / row.subject_id / f"{row.subject_id}-seg.nii.gz")
        seg = np.asarray(img.dataobj)
        assert row.et_mm3 == np.sum(seg == 3) and row.netc_mm3 == np.sum(seg == 1)  # 1 mm³ voxels
        assert row.snfh_mm3 == np.sum(seg == 2) and row.wt_mm3 == np.sum(seg > 0)
        ijk = np.argwhere(seg > 0).mean(0)
        world = img.affine @ np.append(ijk, 1.0)
        assert [row.wt_centroid_x_mm, row.wt_centroid_y_mm, row.wt_centroid_z_mm] == pytest.approx(world[:3])


def test_ground_truth_is_prefixed_and_agrees_with_the_measurement(factors_table):
    table, _ = factors_table
    assert {"gt_tumour_x_mm", "gt_tumour_radius_mm", "gt_has_edema", "gt_et_voxels"} <= set(table.columns)
    assert "tumour_x_mm" not in table.columns
    assert (table["et_mm3"] == table["gt_et_voxels"]).all()
    # the measured centroid lies near the generator's tumour centre, in RAS mm (x: left < 0 < right)
    for row in table.itertuples():
        if row.snfh_mm3 == 0:  # without edema the whole tumour is the generated ellipsoid
            gap = np.linalg.norm(
                [
                    row.wt_centroid_x_mm - row.gt_tumour_x_mm,
                    row.wt_centroid_y_mm - row.gt_tumour_y_mm,
                    row.wt_centroid_z_mm - row.gt_tumour_z_mm,
                ]
            )
            assert gap < 0.5 * row.gt_tumour_radius_mm
        assert np.sign(row.wt_centroid_x_mm) == (1 if row.gt_hemisphere == "right" else -1)


def test_subject_without_tumour_gets_zero_volumes_and_an_empty_centroid(demo_copy, tmp_path):
    victim = sorted(p for p in demo_copy.iterdir() if p.is_dir())[0]
    seg_path = victim / f"{victim.name}-seg.nii.gz"
    img = nib.load(seg_path)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), seg_path)
    index_subjects(demo_copy, tmp_path / "index", progress=False)
    table = subject_factors(tmp_path / "index" / "subjects.csv").set_index("subject_id")
    row = table.loc[victim.name]
    assert row["wt_mm3"] == 0 and row["et_mm3"] == 0 and row["snfh_mm3"] == 0
    assert row[["wt_centroid_x_mm", "wt_centroid_y_mm", "wt_centroid_z_mm"]].isna().all()
    assert table.drop(victim.name)["wt_mm3"].gt(0).all()


def test_unreadable_segmentation_names_the_subject(tmp_path):
    (tmp_path / "subjects.csv").write_text("subject_id,seg\nBraTS-MEN-09999-000,/nonexistent/seg.nii.gz\n")
    with pytest.raises(RuntimeError, match="BraTS-MEN-09999-000"):
        subject_factors(tmp_path / "subjects.csv")
