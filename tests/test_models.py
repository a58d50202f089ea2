"""Encoder/decoder schedules, Exp1 shapes, and gradient checkpointing that changes nothing."""

import pytest
import torch
from torch import nn

from vae_dynamics.models import TCVAESBD, BaselineVAE
from vae_dynamics.models.components.blocks import NormAct


def test_decoder_channel_and_size_schedule_at_base_filters_32():
    with torch.device("meta"):
        model = TCVAESBD(base_filters=32)
        seen = []
        h = model.project(model.broadcast(torch.empty(2, 128)))
        seen.append(tuple(h.shape[1:]))
        for stage in model.decoder.stages:
            h = stage(h)
            seen.append(tuple(h.shape[1:]))
        out = model.decoder.final(h)
    first = model.project[0]
    assert isinstance(first, nn.Conv3d) and first.in_channels == 131 and first.kernel_size == (1, 1, 1)
    assert seen == [
        (256, 8, 8, 8),
        (128, 16, 16, 16),
        (64, 32, 32, 32),
        (32, 64, 64, 64),
        (16, 128, 128, 128),
    ]
    assert tuple(out.shape) == (2, 4, 128, 128, 128)
    ups = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert len(ups) == 4 and all(m.stride == (2, 2, 2) for m in ups)


@pytest.mark.parametrize("cls", [TCVAESBD, BaselineVAE])
def test_groupnorm_everywhere_and_no_batchnorm(cls):
    with torch.device("meta"):
        model = cls(base_filters=32)
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds
    assert not kinds & {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm3d}


def test_encoder_schedule_128_to_8():
    with torch.device("meta"):
        model = TCVAESBD(base_filters=32)
        h = model.encoder.stem(torch.empty(1, 4, 128, 128, 128))
        shapes = [tuple(h.shape[1:])]
        for block in model.encoder.blocks:
            h = block(h)
            shapes.append(tuple(h.shape[1:]))
    assert shapes[0] == (32, 64, 64, 64)  # strided stem: no full-resolution feature maps
    assert shapes[2::2] == [(32, 64, 64, 64), (64, 32, 32, 32), (128, 16, 16, 16), (256, 8, 8, 8)]
    strided = [m for m in model.encoder.modules() if isinstance(m, nn.Conv3d) and m.stride == (2, 2, 2)]
    assert len([m for m in strided if m.kernel_size == (3, 3, 3)]) == 4  # exactly four downsamplings


def test_base_filters_below_16_is_rejected():
    with pytest.raises(ValueError, match="base_filters"):
        TCVAESBD(base_filters=8)


def test_baseline_vae_shapes_at_128_cubed():
    torch.manual_seed(0)
    model = BaselineVAE(z_dim=128, input_channels=4, base_filters=16)
    with torch.no_grad():
        x_hat, mu, logvar, z = model(torch.rand(1, 4, 128, 128, 128))
    assert x_hat.shape == (1, 4, 128, 128, 128)
    assert mu.shape == logvar.shape == z.shape == (1, 128)


@pytest.mark.parametrize("cls", [TCVAESBD, BaselineVAE])
def test_gradient_checkpointing_changes_neither_outputs_nor_gradients(cls):
    torch.manual_seed(0)
    plain = cls(base_filters=16, gradient_checkpointing=False)
    ckpt = cls(base_filters=16, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    norm_acts = [[m.recompute for m in model.modules() if isinstance(m, NormAct)] for model in (plain, ckpt)]
    assert len(norm_acts[0]) == 8 and not any(norm_acts[0]) and all(norm_acts[1])
    x = torch.rand(1, 4, 128, 128, 128)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same reparameterisation noise
        x_hat, mu, logvar, z = model(x)
        loss = ((x_hat - x) ** 2).sum() + (mu**2).sum() + logvar.exp().sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((x_hat.detach(), z.detach(), grads))
    (xa, za, ga), (xb, zb, gb) = results
    # the recomputed forward runs the same kernels: outputs equal, gradients equal up to summation order
    assert torch.allclose(xa, xb, rtol=1e-6, atol=1e-6) and torch.equal(za, zb)
    assert ga.keys() == gb.keys()
    for name in ga:
        scale = ga[name].abs().max().item() + 1e-12
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-5 * scale), name


def test_checkpointing_wraps_blocks_only_when_grad_is_enabled(monkeypatch):
    import vae_dynamics.models.components.blocks as blocks

    calls = []
    real = blocks.checkpoint
    monkeypatch.setattr(
        blocks, "checkpoint", lambda fn, *a, **k: calls.append(tuple(a[0].shape[1:])) or real(fn, *a, **k)
    )
    model = TCVAESBD(base_filters=16, gradient_checkpointing=True)
    x = torch.rand(1, 4, 128, 128, 128)
    with torch.no_grad():
        model(x)
    assert calls == []
    model(x)
    # one checkpoint per encoder residual block (8) and per decoder upsampling block (4), by input shape
    assert len(calls) == 12
    assert calls[:2] == [(4, 128, 128, 128), (16, 64, 64, 64)]  # the stem runs inside block 1's checkpoint
    assert calls[8:] == [(128, 8, 8, 8), (64, 16, 16, 16), (32, 32, 32, 32), (16, 64, 64, 64)]


def test_no_constructor_default_differs_from_the_schema():
    """The schema is the one home of a default. A model built directly (as the shape test builds TCVAESBD)
    starts as a config would start it: each default of a model argument that is a model.* key is the
    schema's. Objectives and LightningModules take their config sections whole: none of their arguments
    is a config key with a default of its own."""
    import inspect

    from vae_dynamics import experiments
    from vae_dynamics.config.schema import section_model
    from vae_dynamics.losses import OBJECTIVES
    from vae_dynamics.models import MODELS
    from vae_dynamics.training.lit_modules import LIT_MODULES, ExperimentLitModule

    checked = 0
    for e in experiments.EXPERIMENTS.values():
        sections = {s: section_model(e.config_model, s).model_fields for s in ("model", "loss", "train")}
        for name, param in inspect.signature(MODELS[e.variant]).parameters.items():
            if name in sections["model"] and param.default is not inspect.Parameter.empty:
                field = sections["model"][name]
                expected = field.get_default(call_default_factory=True)
                found = list(param.default) if isinstance(expected, list) else param.default
                assert found == expected, (
                    f"{MODELS[e.variant].__name__}({name}={param.default!r}): schema {expected!r}"
                )
                checked += 1
        keys = {k for fields in sections.values() for k in fields}
        for cls in (OBJECTIVES[e.variant], LIT_MODULES.get(e.variant, ExperimentLitModule)):
            own = [n for n, p in inspect.signature(cls).parameters.items() if n in keys]
            assert not own, f"{cls.__name__} repeats config keys as arguments: {own}"
    assert checked == 4 + 9  # Exp1: z_dim, input_channels, base_filters, norm; Exp2: those + 5 of its own


def test_a_model_built_directly_starts_as_its_config_starts_it():
    from vae_dynamics import models
    from vae_dynamics.config import config_path, load_config

    cfg = load_config(config_path("exp2"), {"model.base_filters": 16, "train.gradient_checkpointing": False})
    torch.manual_seed(0)
    direct = TCVAESBD(base_filters=16)
    torch.manual_seed(0)
    built = models.build(cfg)
    assert direct.encoder.head.bias[128:].eq(-7.0).all()  # the schema's logvar_init_bias
    for (name, a), (_, b) in zip(direct.state_dict().items(), built.state_dict().items()):
        assert torch.equal(a, b), name
