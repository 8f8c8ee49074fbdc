"""Where the model computes: `--device {auto,cpu,cuda}` of eval, train, search and the app
(COALORA_DEVICE), issue 13 item 6; docs/app.md, "Devices".

auto (the default) is CUDA when torch sees a GPU, else the CPU: on a machine without a GPU
(every machine this project has been measured on) nothing changes. The same code runs on
either device; precision "auto" is bf16 autocast on CUDA (and on a CPU with native bf16),
else fp32 (coalora.eval.scoring.resolve_dtype). Training places the model through
accelerate (`Accelerator(cpu=...)`), never by hand; eval, search and the app move the
CoaLoraModel with `.to(device)`, which also moves the weight switcher's originals and
cache (CoaLoraModel._apply).

The CUDA path has NOT been run on a GPU by this project: `make gpu-check`
(bench/gpu_check.py) is the check to run where one exists.
"""

from __future__ import annotations

import torch

from coalora.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = ("where the model computes: auto (CUDA when torch sees a GPU, else the CPU; the default), "
               "cpu, or cuda (bf16 autocast; fails when no GPU is available)")


def cuda_status() -> str | None:
    """None when torch can use a CUDA GPU, else why not (one phrase)."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return "torch finds no CUDA GPU on this machine"
    return None


def resolve_device(name: str | None, option: str = "--device") -> torch.device:
    """'auto' / 'cpu' / 'cuda' (or 'cuda:N') -> the torch device; ConfigError (one line naming
    `option`, the value and what is allowed) for an unknown name or cuda without a GPU."""
    value = "auto" if name is None or not str(name).strip() else str(name).strip().lower()
    if value == "auto":
        return torch.device("cuda" if cuda_status() is None else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        why = cuda_status()
        if why is not None:
            raise ConfigError(f"{option} {name!r}: {why}; allowed here: auto, cpu")
        index = int(value[5:]) if ":" in value else None
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"{option} {name!r}: there are {torch.cuda.device_count()} CUDA device(s); "
                              f"allowed: auto, cpu, cuda, cuda:0 ... cuda:{torch.cuda.device_count() - 1}")
        return torch.device(value)
    raise ConfigError(f"{option} {name!r} is not a device; allowed: {', '.join(DEVICES)}")


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move an inference model (a CoaLoraModel: switcher state included) to `device` -> the model.
    Training does not use this: accelerate places its model."""
    model.to(device)  # a no-op for tensors already there
    return model
