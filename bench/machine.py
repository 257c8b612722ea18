"""What every benchmark records about where it ran."""

import os
import platform

import torch


# the x86 instruction sets integer kernels depend on (ORT's u8s8 kernels saturate without VNNI)
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu() -> dict:
    """The CPU model and which of FLAGS it has, from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"model": model, "flags": [f for f in FLAGS if f in flags]}


def machine_info() -> dict:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__, "cpu": cpu(),
            "load_average_at_end": list(os.getloadavg())}
