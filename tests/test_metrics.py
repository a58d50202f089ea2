"""Disentanglement metrics against hand-made codes, and MIG against an independent computation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from vae_dynamics.evaluation import LATENT_SCALARS
from vae_dynamics.evaluation.metrics import active_units, compute_metrics, kl_per_dimension

N = 2000
FACTORS = ["size", "pos_x", "pos_y", "has_edema"]


@pytest.fixture(scope="module")
def factors() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "subject_id": [f"S{i:04d}" for i in range(N)],
            "size": rng.uniform(5, 20, N),
            "pos_x": rng.uniform(-60, 60, N),
            "pos_y": rng.normal(0, 30, N),
            "has_edema": rng.random(N) < 0.4,
            "constant": np.full(N, 3.0),  # one value: skipped and listed
        }
    )


def _standardise(v: np.ndarray) -> np.ndarray:
    v = v.astype(float)
    return (v - v.mean()) / v.std()


def latents_from(factors: pd.DataFrame, codes: dict[int, np.ndarray], d: int = 10, noise: float = 1.0):
    """A latents table: dims in `codes` given, the others standard normal noise; 90 % train, 10 % val."""
    rng = np.random.default_rng(1)
    mu = rng.normal(0, noise, (N, d))
    for j, values in codes.items():
        mu[:, j] = values
    table = pd.DataFrame(mu, columns=[f"mu_{j}" for j in range(d)])
    table.insert(0, "split", np.where(np.arange(N) < 0.9 * N, "train", "val"))
    table.insert(0, "subject_id", factors["subject_id"])
    return table


def factorised(factors: pd.DataFrame) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(2)
    return {j: _standardise(factors[f]) + 0.01 * rng.normal(size=N) for j, f in enumerate(FACTORS)}


def independent_mig(mu: np.ndarray, factor: np.ndarray, categorical: bool, bins: int = 20) -> float:
    """MIG of one factor from joint histograms (no sklearn): 20 equal-width bins, natural log."""

    def codes(v: np.ndarray) -> np.ndarray:
        edges = np.linspace(v.min(), v.max(), bins + 1)
        return np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)

    def mi(a: np.ndarray, b: np.ndarray) -> float:
        joint = np.zeros((a.max() + 1, b.max() + 1))
        np.add.at(joint, (a, b), 1.0)
        p = joint / joint.sum()
        pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
        nz = p > 0
        return float(np.sum(p[nz] * np.log(p[nz] / (pa @ pb)[nz])))

    v = np.unique(factor, return_inverse=True)[1] if categorical else codes(factor)
    values = sorted((mi(codes(mu[:, j]), v) for j in range(mu.shape[1])), reverse=True)
    return (values[0] - values[1]) / mi(v, v)


def test_factorised_code_scores_high(factors):
    result = compute_metrics(latents_from(factors, factorised(factors)), factors)
    assert result["factors"] == FACTORS and result["skipped_factors"] == ["constant"]
    assert result["mig"] >= 0.9
    assert result["dci_disentanglement"] >= 0.9 and result["dci_completeness"] >= 0.9
    assert result["dci_informativeness"] >= 0.9
    assert result["sap"] >= 0.9
    assert set(result["mig_per_factor"]) == set(FACTORS)


def test_noise_code_scores_low(factors):
    result = compute_metrics(latents_from(factors, {}), factors)
    assert result["mig"] <= 0.1
    assert result["sap"] <= 0.05
    assert result["dci_informativeness"] < 0.7  # only the boolean's majority class can be guessed


def test_a_dimension_carrying_two_factors_lowers_mig(factors):
    good = compute_metrics(latents_from(factors, factorised(factors)), factors)
    codes = factorised(factors)
    codes[0] = _standardise(factors["size"]) + _standardise(factors["pos_x"])  # size and x entangled
    del codes[1]
    entangled = compute_metrics(latents_from(factors, codes), factors)
    assert entangled["mig_per_factor"]["size"] < good["mig_per_factor"]["size"] - 0.3
    assert entangled["mig_per_factor"]["pos_x"] < good["mig_per_factor"]["pos_x"] - 0.3
    assert entangled["mig"] < good["mig"] - 0.15
    assert entangled["dci_disentanglement"] < good["dci_disentanglement"]


@pytest.mark.parametrize("kind", ["factorised", "noise", "mixed"])
def test_mig_matches_an_independent_computation(factors, kind):
    rng = np.random.default_rng(3)
    codes = {"factorised": factorised(factors), "noise": {}}.get(kind)
    if codes is None:  # partly informative dims: noisy copies and a sum
        codes = {
            0: _standardise(factors["size"]) + rng.normal(0, 0.7, N),
            3: factors["pos_x"] + factors["pos_y"],
        }
    latents = latents_from(factors, codes)
    result = compute_metrics(latents, factors)
    mu = latents[[f"mu_{j}" for j in range(10)]].to_numpy()
    for name in FACTORS:
        expected = independent_mig(mu, factors[name].to_numpy(), categorical=name == "has_edema")
        assert result["mig_per_factor"][name] == pytest.approx(expected, abs=1e-9), name


def test_missing_factor_values_drop_only_those_subjects(factors):
    with_gaps = factors.copy()
    with_gaps.loc[:99, "pos_x"] = np.nan  # e.g. no tumour, no centroid
    latents = latents_from(factors, factorised(factors))
    result = compute_metrics(latents, with_gaps)
    subset = compute_metrics(latents.iloc[100:], factors.iloc[100:])
    assert result["mig_per_factor"]["pos_x"] == pytest.approx(subset["mig_per_factor"]["pos_x"])
    assert result["mig_per_factor"]["size"] == pytest.approx(
        compute_metrics(latents, factors)["mig_per_factor"]["size"]
    )  # the other factors keep every subject
    assert result["dci_subjects"]["train"] == 1800 - 100


def test_active_units_and_kl_per_dimension():
    rng = np.random.default_rng(0)
    mu = np.concatenate([rng.normal(0, 1, (500, 3)), rng.normal(0, 0.05, (500, 2))], axis=1)
    assert active_units(mu) == 3  # Var 1 vs Var 0.0025
    logvar = np.full_like(mu, np.log(0.25))
    kl = kl_per_dimension(mu, logvar)
    expected = np.mean(0.5 * (mu**2 + 0.25 - np.log(0.25) - 1), axis=0)
    assert np.allclose(kl, expected)
    assert kl_per_dimension(np.zeros((4, 2)), np.zeros((4, 2))) == pytest.approx([0.0, 0.0])


def test_metrics_cli_writes_the_documented_keys(factors, tmp_path):
    latents_from(factors, factorised(factors)).to_csv(tmp_path / "latents.csv", index=False)
    factors.to_csv(tmp_path / "factors.csv", index=False)
    out = tmp_path / "m.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae_dynamics.cli",
            "metrics",
            "--latents",
            str(tmp_path / "latents.csv"),
            "--factors",
            str(tmp_path / "factors.csv"),
            "--out",
            str(out),
            "--factors-columns",
            "size,pos_x",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    for key in (
        *LATENT_SCALARS[:-1],  # the headline numbers (kl_total needs log σ², absent from some tables)
        "mig_per_factor",
    ):
        assert key in metrics, key
    assert set(metrics["mig_per_factor"]) == {"size", "pos_x"} and metrics["active_units"] == 10


def test_unknown_factor_column_is_named(factors):
    with pytest.raises(ValueError, match="tumour_volume"):
        compute_metrics(latents_from(factors, {}), factors, ["size", "tumour_volume"])


def test_mutual_information_equals_sklearns_mutual_info_score():
    from sklearn.metrics import mutual_info_score

    from vae_dynamics.evaluation.metrics import discretize, mutual_information

    rng = np.random.default_rng(3)
    for n in (5, 40, 300):
        codes = rng.integers(0, 4, n)
        z = rng.normal(size=n) + codes * rng.uniform(0, 2)
        binned = discretize(z)
        assert mutual_information(codes, binned) == pytest.approx(mutual_info_score(codes, binned), abs=1e-12)
        assert mutual_information(codes, codes) == pytest.approx(mutual_info_score(codes, codes), abs=1e-12)
    assert mutual_information(np.zeros(7, int), np.arange(7)) == pytest.approx(0.0, abs=1e-12)


def test_vectorised_spearman_equals_scipy_per_column_with_ties_and_constants():
    from scipy.stats import spearmanr

    from vae_dynamics.evaluation.evaluate import spearman

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    x[:, 1] = np.round(x[:, 1])  # ties
    x[:, 2] = 1.5  # constant: 0
    y = np.round(rng.normal(size=30) + x[:, 0], 1)
    rho = spearman(x, y)
    expected = [spearmanr(x[:, j], y).statistic if j != 2 else 0.0 for j in range(6)]
    assert np.allclose(rho, expected, atol=1e-12) and abs(rho[0]) > 0.5
    assert np.allclose(spearman(x, np.full(30, 2.0)), 0.0)


def test_an_evaluation_drawing_no_traversal_is_refused_before_any_work(tmp_path):
    from vae_dynamics.evaluation.evaluate import evaluate_run

    with pytest.raises(
        ValueError, match=r"n_traversed \(--traversed-dims, evaluation.traversed_dims\) must be >= 1, got 0"
    ):
        evaluate_run(
            tmp_path / "missing.json", "latents.csv", "factors.csv", tmp_path / "evaluation", n_traversed=0
        )
    assert not (tmp_path / "evaluation").exists()
