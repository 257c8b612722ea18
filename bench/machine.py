"""What every benchmark records about where it ran."""

import os
import platform

import torch


def machine_info() -> dict:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "load_average_at_end": list(os.getloadavg())}
