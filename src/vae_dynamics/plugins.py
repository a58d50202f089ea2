"""Experiment plugins: modules that register experiments beyond the shipped ones.

A plugin is a module that, when imported, calls `vae_dynamics.experiments.register(...)` with its record
(its config model, nn.Module, loss and YAML; docs in experiments.py). It is named either by the entry-point
group `vae_dynamics.experiments` of an installed package (pyproject.toml:
`[project.entry-points."vae_dynamics.experiments"] exp3 = "my_package.exp3"`) or, for a module on
PYTHONPATH, by the environment variable VAE_DYNAMICS_EXPERIMENTS (module names, comma-separated); both are
inherited by the Snakemake jobs and DDP processes a run starts.

Each is imported once, before a config is validated or the registry is read. Standard library only: the
lowest layer, so that config/ can load plugins without importing anything above it.
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "vae_dynamics.experiments"
ENV = "VAE_DYNAMICS_EXPERIMENTS"

_imported: set[str] = set()


class PluginError(ImportError):
    """A named experiment plugin cannot be imported."""


def plugin_modules() -> list[str]:
    """The plugin modules named by VAE_DYNAMICS_EXPERIMENTS, then by installed entry points."""
    named = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys([*named, *_installed()]))


@functools.cache
def _installed() -> tuple[str, ...]:
    # Read once per process: every config validation asks (a sweep validates each of its runs).
    return tuple(ep.value.partition(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_plugins() -> None:
    """Import every plugin module not imported yet (re-entrant: a plugin may import the registry)."""
    for name in plugin_modules():
        if name in _imported:
            continue
        _imported.add(name)  # first: the plugin's own import of the registry calls this again
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure: the next load tries again and says why again
            _imported.discard(name)
            raise PluginError(
                f"experiment plugin {name!r} (named by {ENV} or the entry points {ENTRY_POINT_GROUP!r}) "
                f"cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
