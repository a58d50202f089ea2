"""β-TCVAE loss with the minibatch-weighted sampling (MWS) estimator (Chen et al., NeurIPS 2018).

Names follow the request (and rtqichen/beta-tcvae): log_q_zx_mat, log_q_zx_dim, log_q_z,
log_q_zk, log_prod_q_z, log_q_z_given_x, log_p_z. All terms are sums over the minibatch.
"""

from __future__ import annotations

import math

import torch

from vae_dynamics.config.schema import Exp2Loss
from vae_dynamics.losses.common import (
    BatchPosteriors,
    ModelOutput,
    NonFiniteLossError,
    close_terms,
    reconstruction_sum,
)

__all__ = ["NonFiniteLossError", "TCVAEObjective", "compute_tcvae_loss", "gaussian_log_density"]

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-dimension log N(z; mu, diag(exp(logvar))) = -0.5·(log 2π + logvar + (z-mu)²/exp(logvar))."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def compute_tcvae_loss(
    x_hat: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor,
    *,
    dataset_size: int,
    beta_tc: float,
    alpha: float = 1.0,
    gamma: float = 1.0,
    compute_in_fp32: bool = True,
    batch_posteriors: BatchPosteriors | None = None,
) -> dict[str, torch.Tensor]:
    """Negative weighted ELBO: recon_sum + alpha·mi_sum + beta_tc·tc_sum + gamma·dwkl_sum.

    batch_posteriors: when the minibatch is split across processes (DDP), (mu_all, logvar_all, offset):
    the posteriors of the whole minibatch (gathered, with gradients) and the position of this process's
    first sample in it. The terms are then those of this process's samples, each estimated against all
    M posteriors of the minibatch; summed over processes they equal the single-process terms.
    """
    N = dataset_size  # number of training subjects
    if N < 1:
        raise ValueError(f"dataset_size (number of training subjects) must be >= 1, got {N}")
    mu_j, logvar_j, offset = batch_posteriors if batch_posteriors is not None else (mu, logvar, 0)
    M = mu_j.shape[0]  # minibatch size (the global minibatch under DDP)
    recon_sum = reconstruction_sum(x_hat, x)

    with torch.autocast(device_type=z.device.type, enabled=False):
        if compute_in_fp32:
            z, mu_j, logvar_j = z.float(), mu_j.float(), logvar_j.float()

        # log q(z_{i,k} | x_j): [M, M, d], row i = sample z_i, column j = posterior of x_j
        log_q_zx_dim = gaussian_log_density(z[:, None, :], mu_j[None, :, :], logvar_j[None, :, :])
        # log q(z_i | x_j): [M, M]
        log_q_zx_mat = log_q_zx_dim.sum(dim=2)

        # MWS (Eq. 3): q(z_i) ≈ 1/(N·M) Σ_j q(z_i | x_j)
        log_q_z = torch.logsumexp(log_q_zx_mat, dim=1) - math.log(N * M)
        log_q_zk = torch.logsumexp(log_q_zx_dim, dim=1) - math.log(N * M)  # [M, d]
        log_prod_q_z = log_q_zk.sum(dim=1)

        log_q_z_given_x = torch.diagonal(log_q_zx_mat, offset=offset)  # log q(z_i | x_i)
        log_p_z = (-0.5 * (LOG_2PI + z**2)).sum(dim=1)  # standard normal prior

        mi_sum = (log_q_z_given_x - log_q_z).sum()
        tc_sum = (log_q_z - log_prod_q_z).sum()
        dwkl_sum = (log_prod_q_z - log_p_z).sum()

        total = recon_sum + alpha * mi_sum + beta_tc * tc_sum + gamma * dwkl_sum

    return close_terms(
        total, {"recon": recon_sum, "mi": mi_sum, "tc": tc_sum, "dwkl": dwkl_sum}, "beta_tc", beta_tc
    )


class TCVAEObjective:
    """Exp2's objective (losses.common.Objective): the β-TCVAE loss with N = the training subjects."""

    couples_batch = True  # the MWS estimate of q(z) uses every posterior of the minibatch

    def __init__(self, loss: Exp2Loss, dataset_size: int) -> None:
        self.loss, self.dataset_size = loss, dataset_size

    def __call__(
        self,
        x: torch.Tensor,
        out: ModelOutput,
        *,
        beta: float,
        batch_posteriors: BatchPosteriors | None = None,
    ) -> dict[str, torch.Tensor]:
        loss, (x_hat, mu, logvar, z) = self.loss, out
        return compute_tcvae_loss(
            x_hat,
            x,
            mu,
            logvar,
            z,
            dataset_size=self.dataset_size,
            beta_tc=beta,
            alpha=loss.alpha,
            gamma=loss.gamma,
            compute_in_fp32=loss.compute_in_fp32,
            batch_posteriors=batch_posteriors,
        )

    def weights(self, beta: float) -> dict[str, float]:
        return {"recon": 1.0, "mi": self.loss.alpha, "tc": beta, "dwkl": self.loss.gamma}
