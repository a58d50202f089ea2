"""β-TCVAE loss with the MWS estimator against the request's equations and known special cases."""

import math

import pytest
import torch

from vae_dynamics.losses import NonFiniteLossError, compute_tcvae_loss

KEYS = {"loss", "recon", "mi", "tc", "dwkl", "beta_tc"}


def synthetic_batch(M=4, d=128, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(M, d, generator=g, dtype=dtype)
    logvar = 0.5 * torch.randn(M, d, generator=g, dtype=dtype)
    z = mu + torch.randn(M, d, generator=g, dtype=dtype) * torch.exp(0.5 * logvar)
    x = torch.rand(M, 4, 6, 6, 6, generator=g, dtype=dtype)
    x_hat = torch.rand(M, 4, 6, 6, 6, generator=g, dtype=dtype)
    return x_hat, x, mu, logvar, z


def test_request_synthetic_batch_keys_and_finite():
    x_hat, x, mu, logvar, z = synthetic_batch(M=4, d=128)
    out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=1000, beta_tc=6.0)
    assert set(out) == KEYS
    for key, value in out.items():
        assert torch.isfinite(torch.as_tensor(value)).all(), key
    assert out["beta_tc"].item() == 6.0


def reference_terms(mu, logvar, z, N):
    """The request's equations written out with explicit loops, in float64."""
    mu, logvar, z = mu.double(), logvar.double(), z.double()
    M, d = mu.shape

    def log_normal(zv, m, lv):
        return -0.5 * (math.log(2 * math.pi) + lv + (zv - m) ** 2 / torch.exp(lv))

    mi = tc = dwkl = 0.0
    for i in range(M):
        per_dim = torch.stack([log_normal(z[i], mu[j], logvar[j]) for j in range(M)])  # [M(j), d]
        log_q_z = torch.log(torch.exp(per_dim.sum(1)).sum()) - math.log(N * M)
        log_q_zk = torch.log(torch.exp(per_dim).sum(0)) - math.log(N * M)
        log_prod = log_q_zk.sum()
        log_q_zx = log_normal(z[i], mu[i], logvar[i]).sum()
        log_p = (-0.5 * (math.log(2 * math.pi) + z[i] ** 2)).sum()
        mi += (log_q_zx - log_q_z).item()
        tc += (log_q_z - log_prod).item()
        dwkl += (log_prod - log_p).item()
    return mi, tc, dwkl


@pytest.mark.parametrize("M,d,N", [(4, 8, 1000), (6, 16, 50), (3, 128, 1000)])
def test_terms_match_an_independent_float64_computation(M, d, N):
    # d small enough for the explicit exp() in the reference not to underflow
    _, _, mu, logvar, z = synthetic_batch(M=M, d=d, seed=M + d)
    mu, logvar = 0.3 * mu, 0.1 * logvar
    z = mu + 0.5 * (z - mu)
    x = torch.zeros(M, 4, 2, 2, 2)
    out = compute_tcvae_loss(x, x, mu, logvar, z, dataset_size=N, beta_tc=2.0)
    mi, tc, dwkl = reference_terms(mu, logvar, z, N)
    assert out["mi"].item() == pytest.approx(mi, rel=1e-4, abs=1e-2)
    assert out["tc"].item() == pytest.approx(tc, rel=1e-4, abs=1e-2)
    assert out["dwkl"].item() == pytest.approx(dwkl, rel=1e-4, abs=1e-2)


def test_posteriors_equal_to_prior_give_closed_form_terms():
    # Also shows the terms are not clamped: dwkl = -d·ln N per sample is negative.
    M, d, N = 5, 128, 1000
    mu, logvar = torch.zeros(M, d), torch.zeros(M, d)
    z = torch.randn(M, d, generator=torch.Generator().manual_seed(1))
    x = torch.zeros(M, 4, 2, 2, 2)
    out = compute_tcvae_loss(x, x, mu, logvar, z, dataset_size=N, beta_tc=1.0)
    ln_n = math.log(N)
    assert out["mi"].item() == pytest.approx(M * ln_n, rel=1e-5)
    assert out["tc"].item() == pytest.approx(M * (d - 1) * ln_n, rel=1e-5)
    assert out["dwkl"].item() == pytest.approx(-M * d * ln_n, rel=1e-5)


def test_total_is_the_weighted_sum_of_terms():
    x_hat, x, mu, logvar, z = synthetic_batch(M=4, d=32)
    out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=200, beta_tc=6.0, alpha=0.7, gamma=1.3)
    expected = out["recon"] + 0.7 * out["mi"] + 6.0 * out["tc"] + 1.3 * out["dwkl"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["recon"].item() == pytest.approx(((x_hat - x) ** 2).sum().item(), rel=1e-6)


def test_fp16_inputs_give_float32_results():
    x_hat, x, mu, logvar, z = (t.half() for t in synthetic_batch(M=4, d=128))
    out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=1000, beta_tc=6.0)
    for key in ("loss", "recon", "mi", "tc", "dwkl"):
        assert out[key].dtype == torch.float32, key
        assert torch.isfinite(out[key])


def test_recon_sum_does_not_overflow_in_fp16():
    # 8·4·32³ voxels with error 1 each: 1.05e6 > fp16 max (65504)
    x = torch.zeros(8, 4, 32, 32, 32, dtype=torch.float16)
    mu = torch.zeros(8, 128, dtype=torch.float16)
    out = compute_tcvae_loss(x + 1, x, mu, mu, mu, dataset_size=10, beta_tc=1.0)
    assert out["recon"].item() == 8 * 4 * 32**3


def test_nan_input_raises_naming_the_term():
    x_hat, x, mu, logvar, z = synthetic_batch(M=4, d=16)
    z[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"mi=nan|tc=nan|dwkl=nan"):
        compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=100, beta_tc=1.0)
    x_hat, x, mu, logvar, z = synthetic_batch(M=4, d=16)
    x_hat[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"recon=inf"):
        compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=100, beta_tc=1.0)
