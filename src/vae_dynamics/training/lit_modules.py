"""LightningModules: step logic and logging only (models know nothing of training).

One module for every experiment, wired by its registry record; the request's `VAELitModule` (Exp1) and
`TCVAELitModule` (Exp2) are that module with the experiment fixed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from vae_dynamics import experiments
from vae_dynamics.config.schema import ExperimentConfig
from vae_dynamics.losses import NonFiniteLossError
from vae_dynamics.losses.common import Objective
from vae_dynamics.models import VAE3d
from vae_dynamics.models.diagnostics import latent_summary, spatial_share, z_dependence
from vae_dynamics.provenance import code_version
from vae_dynamics.training.distributed import distributed_world, gather_batch
from vae_dynamics.training.schedules import linear_warmup, lr_factors

log = logging.getLogger("vae_dynamics.train")

# After the β warm-up, a run whose decoder changes its output by less than this when handed another
# subject's code (z_dependence) is reported as ignoring z.
Z_IGNORED_BELOW = 1.05


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


def param_groups(model: VAE3d, lr: float, encoder_head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: every parameter at lr, the encoder's last Linear at lr · encoder_head_lr_scale.

    That Linear reads all 32·8³ head features; Adam moves each weight by about lr per step, so its
    outputs (μ, log σ²) can move by lr · Σ|h| ≈ thousands of times lr in one step, whatever the
    gradient's size: a shared drift of μ and an exploding σ that stall the SBD (docs/LEARNING.md).
    """
    head = list(model.encoder.head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": lr}, {"params": head, "lr": lr * encoder_head_lr_scale}]


def build_optimizer(
    model: VAE3d,
    lr: float,
    *,
    encoder_head_lr_scale: float = 1.0,
    lr_warmup_steps: int = 0,
    encoder_head_lr_ramp_steps: int = 0,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups` and the per-step schedule of the start (training/schedules.lr_factors).

    The scheduler steps once per optimizer step; both groups' base lr is `lr`, their multipliers are
    (warm-up, warm-up · head scale). Training and bench/ build the optimizer here and only here.
    """
    opt = torch.optim.AdamW(param_groups(model, lr, 1.0))

    def factor(group: int) -> Callable[[int], float]:
        return lambda step: lr_factors(
            step, lr_warmup_steps, encoder_head_lr_scale, encoder_head_lr_ramp_steps
        )[group]

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, [factor(0), factor(1)])


class ExperimentLitModule(L.LightningModule):
    """The training step of every experiment: forward, the record's objective with the epoch's β, logging
    of every returned term, and the code-use diagnostics. What differs between experiments (the model,
    the objective, the warmed-up β) comes from the registry record (experiments.py) named `experiment`.

    Under DDP the logged terms are those of the global batch (summed over processes), and the loss
    that is backpropagated is scaled by the world size: DDP averages gradients over processes, and
    the sum-reduced loss of the global batch is the sum, not the mean, of the per-process losses.
    """

    EXPERIMENT: str | None = None  # fixed by the request's named modules below
    LOSS_DEFAULTS: dict[str, Any] = {}  # loss.* keys a caller of the constructor may leave out
    model: VAE3d

    def __init__(
        self,
        model_kwargs: dict[str, Any],
        *,
        dataset_size: int,
        lr: float,
        experiment: str | None = None,
        channels_last: bool = False,
        encoder_head_lr_scale: float = 1.0,
        lr_warmup_steps: int = 0,
        encoder_head_lr_ramp_steps: int = 0,
        diagnostics_every_n_epochs: int = 1,
        **loss: Any,  # the experiment's loss.* keys
    ) -> None:
        super().__init__()
        key = experiment or self.EXPERIMENT
        if key is None or (self.EXPERIMENT and key != self.EXPERIMENT):
            raise ValueError(f"{type(self).__name__} trains {self.EXPERIMENT}, not experiment={experiment!r}")
        self.experiment = experiments.get(key)
        loss = {**self.LOSS_DEFAULTS, **loss}  # before save_hyperparameters: the checkpoint holds them all
        self.save_hyperparameters()
        self.model = self.experiment.model_cls()(**model_kwargs)
        if channels_last:
            self.model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.dataset_size = dataset_size  # N of the MWS estimator: number of TRAIN subjects
        self.loss_cfg = self.experiment.loss_config(loss)
        self.objective: Objective = self.experiment.objective_cls()(self.loss_cfg, dataset_size)
        self._val_posteriors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._probe: dict[str, float] = {}

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, n_train: int, channels_last: bool) -> ExperimentLitModule:
        """The module of the experiment `cfg` selects (model.variant), with N = number of train subjects."""
        experiment = experiments.of(cfg)
        lit_cls: type[ExperimentLitModule] = experiment.lit_cls()
        train = cfg.train
        return lit_cls(
            experiment.model_kwargs(cfg),
            experiment=experiment.key,
            dataset_size=n_train,
            lr=train.lr,
            channels_last=channels_last,
            encoder_head_lr_scale=train.encoder_head_lr_scale,
            lr_warmup_steps=train.lr_warmup_steps,
            encoder_head_lr_ramp_steps=train.encoder_head_lr_ramp_steps,
            diagnostics_every_n_epochs=cfg.logging.diagnostics_every_n_epochs,
            **cfg.loss.model_dump(),
        )

    @property
    def beta(self) -> float:
        """β of the current epoch: linear from 0 to its target over the warm-up (training/schedules)."""
        target = self.experiment.beta_target(self.loss_cfg)
        return linear_warmup(self.current_epoch, target, self.warmup_epochs)

    @property
    def warmup_epochs(self) -> int:
        return self.experiment.warmup_epochs(self.loss_cfg)

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
        if self.hparams["channels_last"]:
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
        every = self.hparams.get("diagnostics_every_n_epochs", 1)
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
        hp = self.hparams  # keys absent in checkpoints saved before them take the old behaviour
        opt, schedule = build_optimizer(
            self.model,
            hp["lr"],
            encoder_head_lr_scale=hp.get("encoder_head_lr_scale", 1.0),
            lr_warmup_steps=hp.get("lr_warmup_steps", 0),
            encoder_head_lr_ramp_steps=hp.get("encoder_head_lr_ramp_steps", 0),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class VAELitModule(ExperimentLitModule):
    """Exp1: BaselineVAE with recon + β_kl·KL; logs {train,val}/{loss,recon,kl,beta_kl}."""

    EXPERIMENT = "exp1"


class TCVAELitModule(ExperimentLitModule):
    """Exp2: TCVAESBD with the β-TCVAE (MWS) loss; logs {train,val}/{loss,recon,mi,tc,dwkl,beta_tc}."""

    EXPERIMENT = "exp2"
    LOSS_DEFAULTS = {"alpha": 1.0, "gamma": 1.0, "compute_in_fp32": True}  # the β-TCVAE paper's weights
