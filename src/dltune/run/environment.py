"""The facts a run records so that its numbers can be reproduced: versions, CPU, threads, git revision."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["environment", "git_revision"]


def git_revision(folder: str | Path | None = None) -> str | None:
    """HEAD of the git work tree around `folder` (default: the current one), with "+dirty" if a tracked file
    changed; one `git status` call (porcelain v2 names the commit in its branch header)."""
    try:
        status = subprocess.run(["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
                                cwd=str(folder or Path.cwd()), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = status.stdout.splitlines()
    head = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    if status.returncode != 0 or head is None or head == "(initial)":
        return None
    return head + ("+dirty" if any(not line.startswith("#") for line in lines) else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str = "cpu", workers: int = 0, folder: str | Path | None = None) -> dict[str, object]:
    """Versions, hardware and parallel settings (torch threads, DataLoader workers) of this process."""
    env: dict[str, object] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "dltune": _version("dltune"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loader_workers": workers,
        "device": device,
        "git_revision": git_revision(folder),
    }
    if device == "cuda":  # the card that "cuda" means in this process (a --jobs worker's own)
        env["device"] = device = f"cuda:{torch.cuda.current_device()}"
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env
