"""Reading torch files safely: tensors and plain containers only, never code from a file.

Every torch file the tool reads (weights, tensor data, quantized models, checkpoints) goes
through `load`, with ``weights_only=True``. A file that asks to import something when
loaded (a pickled class or function) is refused with a sentence saying so: torch's own
advice, to retry with ``weights_only=False``, would run code from the file.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from infoq_deploy.core.errors import UserError


def load(path: str | Path, *, what: str, fix: str):
    """The objects in ``path``; UserError "``path`` ... (as ``what``); ``fix``" when it is refused or unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch: "Unsupported global: GLOBAL mod.Name"
        if wanted:
            raise UserError(f"{path} is refused: loading it would import {wanted[1]}, and files are loaded with "
                            f"weights_only=True so that nothing in a file runs; {fix}") from None
        raise UserError(f"{path} cannot be read as {what} (UnpicklingError); {fix}") from None
    except Exception as exc:  # truncated or foreign file
        raise UserError(f"{path} cannot be read as {what} ({type(exc).__name__}); {fix}") from None
