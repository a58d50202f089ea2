"""The private library methods this project overrides still exist with the signatures it relies on.

`TargetBetaCheckpoint` (training/callbacks.py) overrides Lightning's ModelCheckpoint._save_topk_checkpoint
and calls _should_skip_saving_checkpoint, _save_last_checkpoint and _monitor_candidates;
`AtomicPersistentDataset` (data/cache.py) overrides MONAI's PersistentDataset._cachecheck and calls
_pre_transform. pyproject.toml bounds lightning < 2.7 and monai < 1.7; when a new release is allowed,
this test says at once whether the hooks are still there (the behaviour tests in test_training.py and
test_transforms_and_cache.py say whether they still do the same).
"""

import inspect

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from monai.data import PersistentDataset

from vae_dynamics.data.cache import AtomicPersistentDataset
from vae_dynamics.training.callbacks import TargetBetaCheckpoint


@pytest.mark.parametrize(
    "cls,name,params",
    [
        (ModelCheckpoint, "_save_topk_checkpoint", ["self", "trainer", "monitor_candidates"]),
        (ModelCheckpoint, "_save_last_checkpoint", ["self", "trainer", "monitor_candidates"]),
        (ModelCheckpoint, "_should_skip_saving_checkpoint", ["self", "trainer"]),
        (ModelCheckpoint, "_monitor_candidates", ["self", "trainer"]),
        (PersistentDataset, "_cachecheck", ["self", "item_transformed"]),
        (PersistentDataset, "_pre_transform", ["self", "item_transformed"]),
    ],
)
def test_the_overridden_private_hooks_exist(cls, name, params):
    method = getattr(cls, name, None)
    assert method is not None, f"{cls.__name__}.{name} is gone: update the override before raising the bound"
    assert list(inspect.signature(method).parameters)[: len(params)] == params


def test_the_overrides_are_the_ones_the_library_calls():
    assert TargetBetaCheckpoint._save_topk_checkpoint is not ModelCheckpoint._save_topk_checkpoint
    assert AtomicPersistentDataset._cachecheck is not PersistentDataset._cachecheck
    # PersistentDataset.__getitem__ -> _transform -> _cachecheck: the override is on the read path
    assert "_cachecheck" in inspect.getsource(PersistentDataset._transform)
    assert "_save_topk_checkpoint" in inspect.getsource(ModelCheckpoint.on_validation_end)
