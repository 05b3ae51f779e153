"""The Ansible deployment, for real: every playbook passes `ansible-playbook --syntax-check`, a
malformed or missing inventory variable stops site.yml before any host is touched with a message
naming it, and `molecule test` passes for each role's scenario and for the whole cluster
(site.yml into 7 containers, a file through FUSE, rolling-restart.yml) in a private Docker engine.

Times per scenario are in BENCHMARKS.md ("Ansible and Molecule").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # ansible-playbook and molecule live beside this interpreter
ENGINE_SH = REPO / "scripts" / "docker-engine.sh"
BUILD_BASE = REPO / "docker" / "build-base.sh"
ENGINE_NAME = "ansible-test"
# The Molecule platforms' images: the base, and the base with Prometheus for the monitoring role.
IMAGES = {
    "mooseng-base:bookworm": [],
    "mooseng-base-prometheus:bookworm": ["prometheus", "python3-apt"],
}
PLAYBOOKS = ["site.yml", "deploy.yml", "rolling-restart.yml"]
ROLES = ["mooseng_common", "mooseng_master", "mooseng_chunkserver", "mooseng_client", "mooseng_monitoring"]


def ansible_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0")
    env.update(extra)
    return env


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-8000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def ansible_missing() -> str | None:
    for tool in ("ansible-playbook", "molecule"):
        if not (BIN / tool).exists():
            return f"{tool} is missing beside {sys.executable} (pip install -e '.[test]'; scripts/install.sh does)"
    return None


# --- no engine needed ----------------------------------------------------------------------------


@pytest.mark.parametrize("inventory", ["production", "compose"])
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook, inventory):
    reason = ansible_missing()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", f"inventories/{inventory}",
                           f"playbooks/{playbook}"], cwd=REPO, env=ansible_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, output(proc)


def test_every_public_variable_is_documented():
    """Each role's defaults and meta/argument_specs.yml name the same public variables."""
    for role in ROLES:
        defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
        specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
        public = {k for k in defaults if not k.startswith("_")}
        assert public == set(specs["argument_specs"]["main"]["options"]), role
        assert specs["argument_specs"]["preflight"] == specs["argument_specs"]["main"], role
        assert all(k.startswith(f"{role}_") for k in public), role


# A good inventory of the seed's topology; each case below breaks one thing. The hosts are
# containers that do not exist, so a play that got past its checks would fail differently.
GOOD = {
    "all": {
        "vars": {"ansible_connection": "community.docker.docker", "ansible_python_interpreter": "/usr/bin/python3"},
        "children": {
            "masters": {"hosts": {"master-1": {}, "master-2": {}, "master-3": {}}},
            "chunkservers": {"hosts": {"cs-1": {"mooseng_chunkserver_server_id": 1},
                                       "cs-2": {"mooseng_chunkserver_server_id": 2}}},
            "clients": {"hosts": {"client-1": {}}},
            "monitoring": {"hosts": {"prom": {}}},
        },
    }
}


def _set(path: str, value):
    def change(inv: dict) -> None:
        *parents, last = path.split("/")
        node = inv
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return change


_DELETE = object()

BAD_INVENTORIES = {
    "server id not a number": (_set("all/children/chunkservers/hosts/cs-2/mooseng_chunkserver_server_id", "two"),
                               "mooseng_chunkserver_server_id"),
    "server id out of range": (_set("all/children/chunkservers/hosts/cs-2/mooseng_chunkserver_server_id", 70000),
                               "mooseng_chunkserver_server_id = 70000: an integer 1..65535"),
    "duplicate server id": (_set("all/children/chunkservers/hosts/cs-2/mooseng_chunkserver_server_id", 1),
                            "mooseng_chunkserver_server_id = 1: another chunkserver has the same server id"),
    "no masters group": (_set("all/children/masters", _DELETE),
                         'mooseng_common_masters_group = "masters": the inventory has no such group'),
    "relative mount point": (_set("all/children/clients/hosts/client-1", {"mooseng_client_mount_point": "mnt/x"}),
                             'mooseng_client_mount_point = "mnt/x": an absolute path other than /'),
    "no data dirs": (_set("all/children/chunkservers/vars", {"mooseng_chunkserver_data_dirs": []}),
                     "mooseng_chunkserver_data_dirs = []: a non-empty list of distinct absolute paths"),
    "master port taken twice": (_set("all/children/masters/hosts/master-2", {"mooseng_master_raft_port": 9421}),
                                "mooseng_master_raft_port = 9421: a port number 1..65535 other than mooseng_master_port"),
    "bad write mode": (_set("all/children/clients/vars", {"mooseng_client_write_mode": "both"}),
                       "mooseng_client_write_mode"),
    "bad scrape interval": (_set("all/children/monitoring/vars", {"mooseng_monitoring_scrape_interval": "often"}),
                            'mooseng_monitoring_scrape_interval = "often": a Prometheus duration'),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INVENTORIES)
def test_bad_inventory_stops_the_play_naming_the_variable(case, tmp_path):
    reason = ansible_missing()
    if reason:
        pytest.skip(reason)
    change, message = BAD_INVENTORIES[case]
    inventory = yaml.safe_load(yaml.safe_dump(GOOD))
    change(inventory)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), "playbooks/site.yml"],
                          cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0, output(proc)
    assert message in proc.stdout + proc.stderr, output(proc)
    # Stopped in the checks: no play that changes a host began.
    assert "PLAY [Masters]" not in proc.stdout, output(proc)


def test_good_inventory_passes_the_checks(tmp_path):
    """The same inventory unbroken gets past the checks (and then fails only to reach the hosts)."""
    reason = ansible_missing()
    if reason:
        pytest.skip(reason)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(GOOD))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), "playbooks/site.yml",
                           "-e", "mooseng_common_build_wheelhouse=false"],
                          cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "PLAY [Masters]" in proc.stdout, output(proc)


# --- Molecule in a private Docker engine ---------------------------------------------------------


def docker_missing() -> str | None:
    if os.geteuid() != 0:
        return "a private Docker engine needs root"
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("debootstrap", "debootstrap"),
                          ("iptables", "iptables")):  # fmt: skip
        if not shutil.which(tool):
            return f"{tool} is missing (apt-get install -y {package}; scripts/install.sh does)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: the client hosts need it"
    return ansible_missing()


@pytest.fixture(scope="module")
def docker_host() -> str:
    """DOCKER_HOST of the private engine `ansible-test` with the platforms' images built (cached
    in the engine's state between runs); the engine is stopped afterwards, whatever happened."""
    reason = docker_missing()
    if reason:
        pytest.skip(reason)
    try:
        proc = subprocess.run([str(ENGINE_SH), "start", ENGINE_NAME], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"cannot start the private engine: {proc.stderr.strip()}"
        host = proc.stdout.strip().split("=", 1)[1]
        for image, packages in IMAGES.items():
            proc = subprocess.run([str(BUILD_BASE), image, *packages], env=ansible_env(DOCKER_HOST=host),
                                  capture_output=True, text=True, timeout=900)  # fmt: skip
            assert proc.returncode == 0, output(proc)
        yield host
    finally:
        subprocess.run([str(ENGINE_SH), "stop", ENGINE_NAME], capture_output=True, timeout=180)


def molecule_test(docker_host: str, cwd: Path, *args: str) -> float:
    """Run `molecule test` (destroy, syntax, create, converge, idempotence, verify, destroy);
    return its wall-clock time."""
    start = time.monotonic()
    proc = subprocess.run([str(BIN / "molecule"), "test", *args], cwd=cwd, env=ansible_env(DOCKER_HOST=docker_host),
                          capture_output=True, text=True, timeout=3000)  # fmt: skip
    took = time.monotonic() - start
    assert proc.returncode == 0, output(proc)
    print(f"molecule test {' '.join(args)} in {cwd.relative_to(REPO)}: {took:.0f} s")
    return took


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("role", ROLES)
def test_molecule_role(docker_host, role):
    molecule_test(docker_host, REPO / "roles" / role)


@pytest.mark.timeout(3000)
def test_molecule_cluster(docker_host):
    molecule_test(docker_host, REPO, "-s", "cluster")
