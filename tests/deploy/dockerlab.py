"""The private Docker engine the deployment tests use, and how they run the repo's scripts.

The engine (scripts/docker-engine.sh) lives in its own network namespace, so the seed's fixed
ports that the Compose topology publishes cannot collide with anything on the host, and
containers cannot reach off the machine. Its images persist in /var/lib/mooseng-docker/NAME
between runs (the debootstrap bases take minutes to build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE_SH = REPO / "scripts" / "docker-engine.sh"
ENGINE_NAME = "docker-test"


def docker_missing() -> str | None:
    """Why a private Docker engine cannot run here, or None."""
    if os.geteuid() != 0:
        return "a private Docker engine needs root"
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("docker-compose", "docker-compose"),
                          ("debootstrap", "debootstrap"), ("iptables", "iptables")):  # fmt: skip
        if not shutil.which(tool):
            return f"{tool} is missing (apt-get install -y {package}; scripts/install.sh does)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: the client containers need it"
    return None


def script_env(**extra: str) -> dict[str, str]:
    """The environment for the repo's scripts: this interpreter builds the wheels, no install.sh."""
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "MOOSENG_RUNTIME", "MOOSENG_DOCKER_ENGINE")}
    env.update(MOOSENG_SKIP_INSTALL="1", MOOSENG_PYTHON=sys.executable)
    env.update(extra)
    return env


@dataclass
class Engine:
    name: str
    host: str  # DOCKER_HOST value

    def env(self, **extra: str) -> dict[str, str]:
        return script_env(DOCKER_HOST=self.host, **extra)

    def run(self, *cmd: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env(**extra), capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def in_netns(self, *cmd: str) -> list[str]:
        """CMD run inside the engine's network namespace (where its published ports are)."""
        return [str(ENGINE_SH), "exec", self.name, *cmd]


def stop_engine(name: str) -> None:
    subprocess.run([str(ENGINE_SH), "stop", name], capture_output=True, timeout=180)
