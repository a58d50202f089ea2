"""Disentanglement metrics of a code (posterior means μ) against known factors: MIG, DCI, SAP, active units.

    vae-dynamics metrics --latents L.csv --factors F.csv --out M.json \
        [--factors-columns a,b,c]

L.csv: `subject_id`, `mu_0..mu_{d-1}` (optional `logvar_*`, `split` = train/val); F.csv: `subject_id`
and one column per factor. Definitions:
- MIG (Chen et al. 2018): μ_j and continuous factors discretised into 20 equal-width bins, boolean and
  categorical factors as they are; I(z_j; v_k) from the joint histogram (nats, as sklearn's
  mutual_info_score); MIG = mean over factors of (largest - second largest I over j) / H(v_k).
- DCI (Eastwood & Williams 2018): importance matrix R[j, k] from gradient-boosted trees (regressors for
  continuous factors, classifiers otherwise) fitted on the train split;
  disentanglement = Σ_j ρ_j (1 - H_K(R_j·)), completeness = Σ_k ρ_k (1 - H_d(R_·k)),
  informativeness = mean over factors of the held-out score (R² clipped at 0 for continuous factors,
  accuracy otherwise).
- SAP (Kumar et al. 2018): S[j, k] = R² of predicting v_k linearly from μ_j alone (squared correlation;
  η² for categorical factors with more than two values); SAP = mean over factors of the top-two gap.
- Active units (Burda et al. 2016): number of dimensions with Var over subjects of μ_j > 0.01.
Factors with a single value are skipped and listed; subjects without a value of a factor are left
out for that factor (e.g. the centroid of a subject without tumour).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

from vae_dynamics.data import read_subject_table
from vae_dynamics.inference import latent_columns
from vae_dynamics.io import write_json
from vae_dynamics.models import diagnostics
from vae_dynamics.models.diagnostics import ACTIVE_UNIT_THRESHOLD

N_BINS = 20
MIN_SUBJECTS = 100  # below this the binned MI estimates are dominated by their bias


def is_categorical(values: pd.Series) -> bool:
    """Booleans, strings and numeric columns with at most two distinct values are categorical."""
    if values.dtype == bool or not pd.api.types.is_numeric_dtype(values):
        return True
    return values.nunique() <= 2


def discretize(values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bins over the range of `values` (histogram edges), as integer codes."""
    edges = np.histogram(values, bins=n_bins)[1]
    return np.digitize(values, edges[:-1])


def factor_codes(values: pd.Series) -> np.ndarray:
    """A factor as integer codes: categories as they are, continuous values in 20 equal-width bins."""
    if is_categorical(values):
        return pd.factorize(values)[0]
    return discretize(values.to_numpy(dtype=float))


def active_units(mu: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of dimensions whose posterior mean varies across subjects (Var_x[μ_j] > threshold)."""
    return int(np.sum(np.var(mu, axis=0) > threshold))


def kl_per_dimension(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Mean over subjects of KL(N(μ_j, σ_j²) ‖ N(0, 1)) per dimension (nats), for arrays
    (models/diagnostics.py)."""
    return diagnostics.kl_per_dimension(torch.as_tensor(mu), torch.as_tensor(logvar)).numpy()


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats of two integer-coded variables (the empirical joint distribution): scikit-learn's
    `mutual_info_score`, clipped at 0 (rounding can leave -1e-16)."""
    from sklearn.metrics import mutual_info_score

    return max(0.0, float(mutual_info_score(a, b)))


def discretize_columns(mu: np.ndarray) -> np.ndarray:
    """Each column of μ in 20 equal-width bins (integer codes), as `discretize`."""
    return np.stack([discretize(mu[:, j]) for j in range(mu.shape[1])], axis=1)


def mutual_information_matrix(
    mu: np.ndarray, codes: np.ndarray, binned: np.ndarray | None = None
) -> np.ndarray:
    """I(z_j; v) for each code dimension j, with μ_j in 20 equal-width bins (`binned`: precomputed bins)."""
    binned = discretize_columns(mu) if binned is None else binned
    return np.array([mutual_information(codes, binned[:, j]) for j in range(binned.shape[1])])


def mig_of_factor(mu: np.ndarray, codes: np.ndarray, binned: np.ndarray | None = None) -> float:
    """(largest - second largest I(z_j; v)) / H(v)."""
    mi = np.sort(mutual_information_matrix(mu, codes, binned))[::-1]
    entropy = mutual_information(codes, codes)
    return float((mi[0] - mi[1]) / entropy)


def _entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy (log base `base`) of each column of a matrix of probabilities."""
    p = np.clip(p, 1e-12, None)
    return -np.sum(p * np.log(p), axis=0) / np.log(base)


def dci(
    mu_train: np.ndarray,
    factors_train: list[tuple[np.ndarray, bool]],
    mu_test: np.ndarray,
    factors_test: list[np.ndarray],
    seed: int = 0,
) -> dict[str, Any]:
    """Importance matrix by gradient-boosted trees, then disentanglement, completeness, informativeness."""
    d, k = mu_train.shape[1], len(factors_train)
    importance = np.zeros((d, k))
    informativeness = []
    for i, ((y_train, categorical), y_test) in enumerate(zip(factors_train, factors_test, strict=True)):
        if categorical:
            model = GradientBoostingClassifier(random_state=seed).fit(mu_train, y_train)
            score = float(np.mean(model.predict(mu_test) == y_test))
        else:
            model = GradientBoostingRegressor(random_state=seed).fit(mu_train, y_train)
            score = max(0.0, float(model.score(mu_test, y_test)))  # R², clipped at 0
        importance[:, i] = np.abs(model.feature_importances_)
        informativeness.append(score)
    total = importance.sum()
    if total <= 0:  # no tree found any split: nothing is explained
        return {"disentanglement": 0.0, "completeness": 0.0, "informativeness": informativeness}
    code_weight = importance.sum(axis=1) / total
    per_code = 1.0 - _entropy((importance / np.maximum(importance.sum(1, keepdims=True), 1e-12)).T, max(k, 2))
    factor_weight = importance.sum(axis=0) / total
    per_factor = 1.0 - _entropy(importance / np.maximum(importance.sum(0, keepdims=True), 1e-12), d)
    return {
        "disentanglement": float(np.sum(code_weight * per_code)),
        "completeness": float(np.sum(factor_weight * per_factor)),
        "informativeness": informativeness,
        "importance": importance,
    }


def sap_scores(mu: np.ndarray, values: pd.Series) -> np.ndarray:
    """S[j] = share of the variance of v explained by μ_j alone (R², or η² for multi-class factors)."""
    if is_categorical(values) and values.nunique() > 2:
        codes = pd.factorize(values)[0]
        total = np.sum((mu - mu.mean(0)) ** 2, axis=0)
        between = sum(
            np.sum(codes == c) * (mu[codes == c].mean(0) - mu.mean(0)) ** 2 for c in np.unique(codes)
        )
        return np.where(total > 0, between / np.maximum(total, 1e-12), 0.0)
    v = pd.factorize(values)[0].astype(float) if is_categorical(values) else values.to_numpy(dtype=float)
    vc, mc = v - v.mean(), mu - mu.mean(0)
    denom = np.sqrt(np.sum(mc**2, axis=0) * np.sum(vc**2))
    corr = np.where(denom > 0, (mc * vc[:, None]).sum(0) / np.maximum(denom, 1e-12), 0.0)
    return corr**2


def compute_metrics(
    latents: pd.DataFrame,
    factors: pd.DataFrame,
    factor_columns: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of the module docstring for the subjects present in both tables."""
    for name, df in (("latents", latents), ("factors", factors)):
        if "subject_id" not in df.columns:
            raise ValueError(f"{name} table has no subject_id column")
    mu_cols = latent_columns(latents)
    if factor_columns is None:
        factor_columns = [c for c in factors.columns if c not in ("subject_id", "split")]
    missing = [c for c in factor_columns if c not in factors.columns]
    if missing:
        raise ValueError(
            f"factor column(s) {missing} not in the factors table; it has {list(factors.columns)}"
        )
    table = latents.merge(factors[["subject_id", *factor_columns]], on="subject_id", how="inner")
    if len(table) < 4:
        raise ValueError(f"only {len(table)} subjects are in both the latents and the factors table")
    if "split" in table.columns and set(table["split"]) >= {"train", "val"}:
        is_train = (table["split"] == "train").to_numpy()
    else:  # no split given: a seeded 80/20 split
        is_train = np.random.default_rng(seed).random(len(table)) < 0.8
    mu_all = table[mu_cols].to_numpy(dtype=float)

    out: dict[str, Any] = {"n_subjects": len(table), "latent_dim": len(mu_cols), "warnings": []}
    if len(table) < MIN_SUBJECTS:
        out["warnings"].append(
            f"only {len(table)} subjects: mutual information over {N_BINS} bins and held-out DCI scores "
            f"need hundreds; below {MIN_SUBJECTS} treat these numbers as a smoke test"
        )
    mig, sap, skipped, used = {}, {}, [], []
    binned_all = discretize_columns(mu_all)  # bins over every subject; recomputed for a subset
    for name in factor_columns:
        present = table[name].notna().to_numpy()
        values = table.loc[present, name]
        if values.nunique() < 2:
            skipped.append(name)
            continue
        used.append(name)
        mu = mu_all[present]
        mig[name] = mig_of_factor(mu, factor_codes(values), binned_all if present.all() else None)
        scores = np.sort(sap_scores(mu, values))[::-1]
        sap[name] = float(scores[0] - scores[1])
    out["factors"] = used
    out["skipped_factors"] = skipped
    out["mig"] = float(np.mean(list(mig.values()))) if mig else None
    out["mig_per_factor"] = mig
    out["sap"] = float(np.mean(list(sap.values()))) if sap else None
    out["sap_per_factor"] = sap
    out.update(_dci_on_complete_subjects(table, used, mu_all, is_train, seed))
    out["active_units"] = active_units(mu_all)
    if any(c.startswith("logvar_") for c in latents.columns):
        kl = kl_per_dimension(mu_all, table[latent_columns(table, "logvar_")].to_numpy(dtype=float))
        out["kl_per_dim"] = [float(v) for v in kl]
        out["kl_total"] = float(kl.sum())
    return out


def _dci_on_complete_subjects(
    table: pd.DataFrame, names: list[str], mu: np.ndarray, is_train: np.ndarray, seed: int
) -> dict[str, Any]:
    """DCI over the subjects that have every factor, trees fitted on train, scored on val."""
    none = {"dci_disentanglement": None, "dci_completeness": None, "dci_informativeness": None}
    complete = table[names].notna().all(axis=1).to_numpy() if names else np.zeros(len(table), bool)
    tr, te = complete & is_train, complete & ~is_train
    if tr.sum() < 2 or te.sum() < 1:
        return {**none, "dci_note": f"too few subjects with every factor ({tr.sum()} train, {te.sum()} val)"}
    train, test, kept = [], [], []
    for name in names:
        values = table.loc[complete, name]
        categorical = is_categorical(values)
        target = np.empty(len(table), dtype=float)
        target[complete] = pd.factorize(values)[0] if categorical else values.to_numpy(dtype=float)
        if len(np.unique(target[tr])) < 2:
            continue  # constant on the train split: nothing to fit
        train.append((target[tr], categorical))
        test.append(target[te])
        kept.append(name)
    if not kept:
        return {**none, "dci_note": "no factor varies on the train split"}
    result = dci(mu[tr], train, mu[te], test, seed)
    return {
        "dci_disentanglement": result["disentanglement"],
        "dci_completeness": result["completeness"],
        "dci_informativeness": float(np.mean(result["informativeness"])),
        "dci_informativeness_per_factor": dict(zip(kept, result["informativeness"])),
        "dci_subjects": {"train": int(tr.sum()), "val": int(te.sum())},
    }


def metrics_from_files(
    latents_csv: str | os.PathLike[str],
    factors_csv: str | os.PathLike[str],
    out_json: str | os.PathLike[str] | None = None,
    factor_columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """compute_metrics on two CSV files; write the result as JSON when `out_json` is given."""
    result = compute_metrics(read_subject_table(latents_csv), read_subject_table(factors_csv), factor_columns)
    if out_json is not None:
        write_json(result, out_json)
    return result
