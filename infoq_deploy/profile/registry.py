"""Sensitivity methods by name: what `profile --method` lists and dispatches.

A method is one module of this package with

    def profile(model, target, data, *, seed=0, ...) -> SensitivityTable

taking the settings it understands as keyword arguments (``progress`` and ``plots_dir``
are offered to every method; the command line passes only those a method's signature
names), optionally ``notes(table) -> list[str]``, lines for the run report, and
``DISTRIBUTED = True`` when it splits its work across ``torchrun``'s processes. Adding a
method is that module plus one line in ``METHODS``; modules are imported on first use
(InfoQ pulls in scipy and matplotlib).
"""

from __future__ import annotations

import inspect

from infoq_deploy.core import distributed
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.registry import Entry, by_name, load

METHODS = by_name(
    Entry("infoq", "infoq_deploy.profile.infoq",
          "change of sliced mutual information at downstream observers, the paper's method (needs --data)"),
    Entry("mse", "infoq_deploy.profile.mse",
          "relative quantization error of each layer's weights (and inputs, with --data), a cheap local proxy"),
    Entry("hawq", "infoq_deploy.profile.hawq",
          "HAWQ-v2: Hessian trace (Hutchinson) times quantization perturbation, weights and inputs (needs --data)"),
    Entry("clado", "infoq_deploy.profile.clado",
          "CLADO: measured loss change of each layer and each pair of layers, a quadratic program (needs --data)"),
)
DEFAULT = "infoq"


def names() -> list[str]:
    return list(METHODS)


def get(name: str):
    """The module of method ``name``."""
    return load(METHODS, name, "method")


def accepts(name: str, setting: str) -> bool:
    params = inspect.signature(get(name).profile).parameters
    return setting in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run(name: str, model, target, data, **settings):
    """The sensitivity table of ``model`` for ``target`` by method ``name``; settings the
    method does not take are left out (e.g. InfoQ's projection count for ``mse``)."""
    for setting in ("pairwise", "noise_floor", "label_term", "shrink"):  # InfoQ's own options, refused elsewhere
        if settings.get(setting) and not accepts(name, setting):
            flag = "--" + setting.replace("_", "-")
            raise UserError(f"{flag} is a setting of --method infoq, not of {name}"
                            + (" (CLADO always measures pairs)" if name == "clado" and setting == "pairwise" else "")
                            + f"; drop {flag} or use --method infoq")
    device = settings.get("device")
    if device is not None and str(device) != "cpu" and not accepts(name, "device"):
        raise UserError(f"--method {name} runs on the CPU only; drop --device (--method infoq runs on a GPU)")
    if distributed.launched() and not getattr(get(name), "DISTRIBUTED", False):
        raise UserError(f"--method {name} does not split its work across processes; run it without torchrun "
                        "(--method infoq does)")
    table = get(name).profile(model, target, data, **{k: v for k, v in settings.items() if accepts(name, k)})
    # the threshold rule simulated: allocate and quantize refuse the table for another one
    table.meta["scale_rule"] = target.scale_rule
    return table


def notes(name: str, table) -> list[str]:
    """What the run report should say about a table this method made."""
    method = get(name)
    return list(method.notes(table)) if hasattr(method, "notes") else []
