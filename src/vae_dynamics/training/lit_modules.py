"""LightningModules: step logic and logging only (models know nothing of training).

One module for every experiment, built from its whole config; the request's `VAELitModule` (Exp1) and
`TCVAELitModule` (Exp2) are that module with the experiment fixed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch

from vae_dynamics import experiments, models
from vae_dynamics.config import validate_config
from vae_dynamics.config.schema import Exp1Config, Exp2Config, ExperimentConfig, TrainConfig, variant_of
from vae_dynamics.losses import OBJECTIVES, NonFiniteLossError, Objective
from vae_dynamics.models import VAE3d
from vae_dynamics.models.diagnostics import Z_IGNORED_BELOW, latent_summary, spatial_share, z_dependence
from vae_dynamics.provenance import code_version
from vae_dynamics.training.distributed import distributed_world, gather_batch
from vae_dynamics.training.schedules import linear_warmup, lr_factors

log = logging.getLogger("vae_dynamics.train")


def code_use_problems(stats: dict[str, float]) -> list[str]:
    """The measures that say the code is not used, each named as it is logged, with its threshold."""
    problems = []
    if stats.get("active_units", 2) < 2:
        problems.append(f"val/active_units {stats['active_units']:.0f} < 2: the code is collapsed")
    if stats.get("z_dependence", 2.0) < Z_IGNORED_BELOW:
        problems.append(
            f"val/z_dependence {stats['z_dependence']:.3f} < {Z_IGNORED_BELOW}: the decoder ignores z"
        )
    return problems


def param_groups(model: VAE3d, lr: float) -> list[dict[str, Any]]:
    """AdamW groups: every parameter, then the encoder's last Linear (its own lr schedule: lr_factors).

    That Linear reads all 32·8³ head features; Adam moves each weight by about lr per step, so its
    outputs (μ, log σ²) can move by lr · Σ|h| ≈ thousands of times lr in one step, whatever the
    gradient's size: a shared drift of μ and an exploding σ that stall the SBD (docs/LEARNING.md).
    """
    head = list(model.encoder.head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": lr}, {"params": head, "lr": lr}]


def build_optimizer(
    model: VAE3d, train: TrainConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups` and the per-step schedule of the start (training/schedules.lr_factors).

    The scheduler steps once per optimizer step; both groups' base lr is train.lr, their multipliers are
    (warm-up, warm-up · head scale). Training and bench/ build the optimizer here and only here.
    """
    opt = torch.optim.AdamW(param_groups(model, train.lr))

    def factor(group: int) -> Callable[[int], float]:
        return lambda step: lr_factors(step, train)[group]

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, [factor(0), factor(1)])


class ExperimentLitModule(L.LightningModule):
    """The training step of every experiment: forward, its objective with the epoch's β, logging of
    every returned term, and the code-use diagnostics. It takes the whole typed config (saved as the
    hyperparameters, so `load_from_checkpoint` rebuilds it); the model and the objective are those the
    config's model.variant names (models.MODELS, losses.OBJECTIVES), the warmed-up β its experiment's.

    Under DDP the logged terms are those of the global batch (summed over processes), and the loss
    that is backpropagated is scaled by the world size: DDP averages gradients over processes, and
    the sum-reduced loss of the global batch is the sum, not the mean, of the per-process losses.
    """

    VARIANT: str | None = None  # the model.variant a named module trains (the request's modules below)
    model: VAE3d

    def __init__(
        self, config: ExperimentConfig | Mapping[str, Any], dataset_size: int, channels_last_3d: bool = False
    ) -> None:
        """`channels_last_3d`: train.channels_last as this machine resolves it (trainer.Hardware)."""
        super().__init__()
        cfg = config if isinstance(config, ExperimentConfig) else validate_config(config)
        if self.VARIANT and cfg.model.variant != self.VARIANT:
            raise ValueError(f"{type(self).__name__} trains {self.VARIANT}, not {cfg.model.variant!r}")
        # plain data in the checkpoint: it loads with weights_only=True
        self.save_hyperparameters(
            {"config": cfg.to_dict(), "dataset_size": dataset_size, "channels_last_3d": channels_last_3d}
        )
        self.cfg, self.experiment = cfg, experiments.of(cfg)
        self.model = models.build(cfg)
        if channels_last_3d:
            self.model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.dataset_size = dataset_size  # N of the MWS estimator: number of TRAIN subjects
        self.objective: Objective = OBJECTIVES[cfg.model.variant](cfg.loss, dataset_size)  # type: ignore[call-arg]
        self._val_posteriors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._probe: dict[str, float] = {}

    @staticmethod
    def for_config(
        cfg: ExperimentConfig, n_train: int, channels_last_3d: bool = False
    ) -> ExperimentLitModule:
        """The module of the experiment `cfg` selects (LIT_MODULES), with N = number of train subjects."""
        return LIT_MODULES.get(cfg.model.variant, ExperimentLitModule)(cfg, n_train, channels_last_3d)

    @property
    def beta(self) -> float:
        """β of the current epoch: linear from 0 to its target over the warm-up (training/schedules)."""
        target = self.experiment.beta_target(self.cfg.loss)
        return linear_warmup(self.current_epoch, target, self.warmup_epochs)

    @property
    def warmup_epochs(self) -> int:
        return self.experiment.warmup_epochs(self.cfg.loss)

    def compute_loss(
        self, x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The objective's terms ("loss" is backpropagated; every term is logged)."""
        world, rank = distributed_world()
        batch = None
        if world > 1 and self.objective.couples_batch:
            # Under DDP every sample's estimate uses the posteriors of the whole global batch (M = W·m).
            batch = (gather_batch(mu), gather_batch(logvar), rank * mu.shape[0])
        return self.objective(x, (x_hat, mu, logvar, z), beta=self.beta, batch_posteriors=batch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(x)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        x = batch["image"]
        if self.hparams["channels_last_3d"]:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x_hat, mu, logvar, z = self.model(x)
        if stage == "val":
            self._val_posteriors.append((mu.detach().float(), logvar.detach().float()))
        try:
            terms = self.compute_loss(x_hat, x, mu, logvar, z)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"{exc} ({stage}, epoch {self.current_epoch}, global step {self.global_step}); "
                "training stopped, the last good checkpoint is kept"
            ) from exc
        world, _ = distributed_world()
        logged = {k: v.detach() for k, v in terms.items()}
        if world > 1:  # the global batch's terms (β is the same everywhere)
            names = [k for k in logged if not k.startswith("beta")]
            summed = torch.stack([logged[k].float() for k in names])
            torch.distributed.all_reduce(summed)
            logged.update(zip(names, summed))
        batch_size = x.shape[0] * world
        # Already global and equal on every process: sync_dist only averages equal numbers (and tells
        # Lightning the epoch values are meant to be global).
        sync = world > 1
        self.log_dict(
            {f"{stage}/{k}": v for k, v in logged.items()},
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            prog_bar=False,
            sync_dist=sync,
        )
        if stage == "train":  # per-step curves beside the per-epoch means (loss_curves.png, TensorBoard)
            # already global and equal on every rank: no collective per step (sync_dist=False)
            self.log_dict(
                {f"train_step/{k}": v for k, v in logged.items() if not k.startswith("beta")},
                on_step=True,
                on_epoch=False,
                batch_size=batch_size,
                prog_bar=False,
                sync_dist=False,
            )
        self.log(
            f"{stage}_loss",
            logged["loss"],
            on_epoch=True,
            batch_size=batch_size,
            prog_bar=True,
            logger=False,
            sync_dist=sync,
        )
        return terms["loss"] * world

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "val")
        every = self.cfg.logging.diagnostics_every_n_epochs
        if batch_idx == 0 and batch["image"].shape[0] >= 2 and (self.current_epoch + 1) % every == 0:
            self._probe_decoder(batch["image"], self._val_posteriors[-1][0])
        return loss

    # ---- diagnostics: is the code used? (models/diagnostics.py) ----------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_posteriors, self._probe = [], {}

    def _probe_decoder(self, x: torch.Tensor, mu: torch.Tensor) -> None:
        """z-dependence and the spatial share of the decoder input, on the first validation batch."""
        self._probe = {
            "z_dependence": z_dependence(self.model, x, mu),
            "spatial_share": spatial_share(self.model.decoder_input(mu)),
        }

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val_posteriors:
            return
        mu, logvar = (torch.cat(t) for t in zip(*self._val_posteriors))
        stats = {**(latent_summary(mu, logvar) if mu.shape[0] >= 2 else {}), **self._probe}
        world, _ = distributed_world()
        self.log_dict({f"val/{k}": float(v) for k, v in stats.items()}, sync_dist=world > 1)
        if self.current_epoch + 1 >= self.warmup_epochs and stats:
            problems = code_use_problems(stats)
            if problems:
                log.warning(
                    "epoch %d: %s (docs/LEARNING.md says what to look at)",
                    self.current_epoch,
                    "; ".join(problems),
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The code that wrote it: a resume across a version change is reported (training/run.py).
        checkpoint["vae_dynamics"] = code_version()

    def configure_optimizers(self) -> dict[str, Any]:  # type: ignore[override]
        opt, schedule = build_optimizer(self.model, self.cfg.train)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class VAELitModule(ExperimentLitModule):
    """Exp1: BaselineVAE with recon + β_kl·KL; logs {train,val}/{loss,recon,kl,beta_kl}."""

    VARIANT = variant_of(Exp1Config)


class TCVAELitModule(ExperimentLitModule):
    """Exp2: TCVAESBD with the β-TCVAE (MWS) loss; logs {train,val}/{loss,recon,mi,tc,dwkl,beta_tc}."""

    VARIANT = variant_of(Exp2Config)


# model.variant -> its LightningModule; an experiment not listed trains with ExperimentLitModule.
LIT_MODULES: dict[str, type[ExperimentLitModule]] = {
    VAELitModule.VARIANT: VAELitModule,
    TCVAELitModule.VARIANT: TCVAELitModule,
}
