"""The Docker deployment, for real: docker-compose.yml is the seed's topology, test-docker-setup.sh
builds the images offline in a private engine and passes end to end (seed "Testing" section,
byte-exact data, leader failover, clean stop), and every bad input ends in the seed's
troubleshooting hint instead of a stack trace.

Cold, on a fresh machine (debootstrap bases, wheels, images): about 10 minutes; with the bases
cached in /var/lib/mooseng-docker/docker-test: about 4 (BENCHMARKS.md, "Docker deployment").
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerlab import ENGINE_NAME, REPO, docker_missing, script_env

from mooseng import config

# Building the images from nothing takes minutes; a test that needs them may be the one that builds.
pytestmark = pytest.mark.timeout(2400)

DEMO = str(REPO / "demo-unified-cluster.sh")
SEED_PORTS = {
    "master-1": [9421, 9422, 9423],
    "master-2": [9431, 9432, 9433],
    "master-3": [9441, 9442, 9443],
    "chunkserver-1": [9420, 9425],
    "chunkserver-2": [9450, 9455],
    "chunkserver-3": [9460, 9465],
    "client-1": [9427],
    "client-2": [9437],
    "client-3": [9447],
    "prometheus": [9090],
    "grafana": [3000],
    "dashboard": [8080],
}


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(type, source, target) of a service's volumes, from Compose v1's short or v2's long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v["type"], v["source"], v["target"]))
        else:
            source, target = v.split(":")[:2]
            out.append(("bind" if source.startswith(("/", ".")) else "volume", source, target))
    return out


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


# --- no engine needed ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_config() -> dict:
    """docker-compose.yml as Compose 1.29 resolves it (the file must be valid for it)."""
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is missing (apt-get install -y docker-compose)")
    proc = subprocess.run(["docker-compose", "--profile", "grafana", "config"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=script_env())  # fmt: skip
    assert proc.returncode == 0, output(proc)
    return yaml.safe_load(proc.stdout)


def test_compose_file_is_the_seed_topology(compose_config):
    services = compose_config["services"]
    assert sorted(services) == sorted(SEED_PORTS)
    for name, ports in SEED_PORTS.items():
        svc = services[name]
        assert svc["container_name"] == f"mooseng-{name}"
        assert sorted(p["published"] for p in svc["ports"]) == ports, name
        assert sorted(p["target"] for p in svc["ports"]) == ports, f"{name} listens on its seed ports inside the network too"
        assert list(svc["networks"]) == ["mooseng"], name
        assert svc["healthcheck"]["test"], f"{name} has no healthcheck"
    assert compose_config["networks"]["mooseng"]["driver"] == "bridge"

    peers = "master-1=master-1:9422,master-2=master-2:9432,master-3=master-3:9442"
    for i in (1, 2, 3):
        env = services[f"master-{i}"]["environment"]
        assert env["MOOSENG_NODE_ID"] == f"master-{i}" and env["MOOSENG_RAFT_PEERS"] == peers
        assert env["MOOSENG_CLUSTER_ID"] == "mooseng"
        assert env["MOOSENG_ADVERTISE"] == f"master-{i}:{SEED_PORTS[f'master-{i}'][0]}"

        cs = services[f"chunkserver-{i}"]
        assert cs["environment"]["MOOSENG_SERVER_ID"] == str(i)
        assert cs["environment"]["MOOSENG_MASTER_ADDRS"] == "master-1:9421,master-2:9431,master-3:9441"
        disks = [m for m in mounts(cs) if m[2].startswith("/data/disk")]
        assert len(disks) == 4 and all(kind == "volume" for kind, _, _ in disks), cs["volumes"]
        assert cs["environment"]["MOOSENG_DATA_DIRS"] == ",".join(target for _, _, target in disks)
        assert {d: "service_healthy" for d in ("master-1", "master-2", "master-3")} == {
            k: v["condition"] for k, v in cs["depends_on"].items()
        }

        client = services[f"client-{i}"]
        assert client["environment"]["MOOSENG_MOUNT_POINT"] == "/mnt/mooseng"
        assert client["environment"]["MOOSENG_CACHE_SIZE_MB"] == "256"
        assert client["cap_add"] == ["SYS_ADMIN"]
        assert client["devices"] == ["/dev/fuse:/dev/fuse"]
    volumes = compose_config["volumes"]
    assert len([v for v in volumes if "-disk" in v]) == 12 and len([v for v in volumes if v.startswith("master-")]) == 3

    grafana = services["grafana"]
    assert grafana["profiles"] == ["grafana"], "Grafana (a public image) must stay out of the offline `up`"
    assert grafana["environment"]["GF_SECURITY_ADMIN_USER"] == "admin"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "admin"
    for svc in ("prometheus", "grafana"):
        for kind, source, _ in mounts(services[svc]):
            if kind == "bind":
                assert Path(source).is_relative_to(REPO / "monitoring"), source
    assert all("build" in services[s] for s in SEED_PORTS if s != "grafana"), "every other image is built here"


RENDER = REPO / "docker" / "scripts" / "render-config.py"


def test_render_config_applies_variables_and_keeps_comments(tmp_path):
    render = runpy.run_path(str(RENDER))["render"]
    env = {"MOOSENG_NODE_ID": "master-2", "MOOSENG_RAFT_PEERS": "master-1=m1:9422,master-2=m2:9432",
           "MOOSENG_CACHE_SIZE_MB": "512", "MOOSENG_LISTEN": "master-2:9431"}  # fmt: skip
    text = render("master", str(REPO / "docker/configs/master.toml"), env)
    assert 'node_id = "master-2"' in text and "# MOOSENG_NODE_ID" in text
    assert 'raft_peers = "master-1=m1:9422,master-2=m2:9432"' in text
    assert "cache_size_mb = 512" in text and 'listen = "master-2:9431"' in text
    out = tmp_path / "master.toml"
    out.write_text(text)
    cfg = config.load("master", out, env={})
    assert (cfg.node_id, cfg.cache_size_mb, cfg.listen) == ("master-2", 512, "master-2:9431")

    text = render("chunkserver", str(REPO / "docker/configs/chunkserver.toml"),
                  {"MOOSENG_MASTER_ADDRS": "a:1,b:2", "MOOSENG_DATA_DIRS": "/d1,/d2"})  # fmt: skip
    assert 'master_addrs = ["a:1", "b:2"]' in text and 'data_dirs = ["/d1", "/d2"]' in text
    cfg_path = tmp_path / "cs.toml"
    cfg_path.write_text(text)
    assert config.load("chunkserver", cfg_path, env={}).master_addrs == ["a:1", "b:2"]


def test_render_config_refuses_a_bad_variable_in_one_line(tmp_path):
    env = {**os.environ, "MOOSENG_CACHE_SIZE_MB": "lots", "PYTHONPATH": str(REPO / "daemons")}
    proc = subprocess.run([sys.executable, str(RENDER), "client", str(REPO / "docker/configs/client.toml"),
                           str(tmp_path / "out.toml")], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "config error: cache_size_mb = 'lots': invalid literal for int() with base 10: 'lots'"
    assert not (tmp_path / "out.toml").exists()


@pytest.mark.parametrize("script", [[DEMO, "status"], [DEMO, "start"], [str(REPO / "test-docker-setup.sh")]])
def test_unreachable_engine_gives_the_seed_hint(script):
    env = script_env(DOCKER_HOST="unix:///nonexistent/mooseng-test-docker.sock", MOOSENG_RUNTIME="docker")
    proc = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1, output(proc)
    assert "no Docker engine answers at unix:///nonexistent/mooseng-test-docker.sock (Docker daemon not running)" in proc.stderr
    assert "sudo systemctl start docker" in proc.stderr and "scripts/docker-engine.sh start" in proc.stderr
    no_traceback(proc)


def test_without_an_engine_the_demo_says_it_runs_locally():
    env = script_env(DOCKER_HOST="unix:///nonexistent/mooseng-test-docker.sock", MOOSENG_LOCAL_ROOT="/nonexistent/demo")
    proc = subprocess.run([DEMO, "urls"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.stdout.splitlines()[0] == "==> Runtime: local processes (no Docker engine reachable).", output(proc)


# --- the whole deployment ------------------------------------------------------------------------


def test_test_docker_setup_passes_in_a_private_engine():
    """test-docker-setup.sh on a machine without an engine: it starts its own, builds, tests, tears down."""
    reason = docker_missing()
    if reason:
        pytest.skip(reason)
    env = script_env(MOOSENG_DOCKER_ENGINE=ENGINE_NAME)
    proc = subprocess.run([str(REPO / "test-docker-setup.sh")], env=env, capture_output=True, text=True,
                          timeout=2300, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, output(proc)
    for step in ("client-2 read: Hello MooseNG", "bigfile: 104857600 bytes", "identical on 3 clients",
                 "Prometheus: 9 of 9 MooseNG targets up", "leads after", "11 services exited 0",
                 "read back byte-exact after the restart", "all checks passed"):  # fmt: skip
        assert step in proc.stdout, f"missing {step!r}\n{output(proc)}"
    check = subprocess.run([str(REPO / "scripts/docker-engine.sh"), "env", ENGINE_NAME], capture_output=True, text=True)
    assert check.returncode != 0, "test-docker-setup.sh left the engine it started running"


# --- bad input against a real engine -------------------------------------------------------------


@pytest.fixture(scope="module")
def images(engine):
    """The images built in the engine (cached after the first build)."""
    script = f"""
        REPO_DIR={REPO}; PYTHON={sys.executable}
        say() {{ :; }}; die() {{ echo "$*" >&2; exit 1; }}
        . scripts/docker-demo.sh
        require_engine && build_images
    """
    proc = engine.run("bash", "-c", script, timeout=1800)
    assert proc.returncode == 0, output(proc)
    return engine


def demo(engine, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    return engine.run(DEMO, *args, timeout=timeout, MOOSENG_RUNTIME="docker", **env)


def test_status_and_test_without_a_cluster_say_to_start_it(engine):
    for command in ("status", "test"):
        proc = demo(engine, command)
        assert proc.returncode == 1, output(proc)
        assert "the Docker cluster is not running (no container mooseng-master-1)" in proc.stderr
        no_traceback(proc)


def test_port_taken_gives_the_seed_hint(images):
    holder = subprocess.Popen(
        images.in_netns(sys.executable, "-c", "import socket, sys, time\n"
                        "s = socket.socket(); s.bind(('0.0.0.0', 9421)); s.listen()\n"
                        "print('ready', flush=True); time.sleep(900)"),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        proc = demo(images, "start")
        assert proc.returncode == 1, output(proc)
        assert "port 9421 is already in use (Port conflicts): check for conflicting processes" in proc.stderr
        assert f"scripts/docker-engine.sh exec {ENGINE_NAME} lsof -i :9421" in proc.stderr
        no_traceback(proc)
    finally:
        holder.kill()
        holder.wait()
        demo(images, "cleanup")


def test_missing_fuse_device_gives_the_seed_hint(images):
    try:
        proc = demo(images, "start", MOOSENG_FUSE_DEVICE="/dev/mooseng-test-no-fuse")
        assert proc.returncode == 1, output(proc)
        assert "FUSE mounting issues: the engine cannot give the clients the FUSE device /dev/mooseng-test-no-fuse" in proc.stderr
        assert "docker exec mooseng-client-1 ls -la /dev/fuse" in proc.stderr
        assert "docker-compose logs client-1" in proc.stderr
        no_traceback(proc)
    finally:
        demo(images, "cleanup")


def test_client_that_cannot_mount_is_named_with_the_fuse_hint(images):
    """/dev/null as the FUSE device: the containers start, the mount fails, start says which and why."""
    try:
        proc = demo(images, "start", MOOSENG_FUSE_DEVICE="/dev/null")
        assert proc.returncode == 1, output(proc)
        assert "--- last lines of docker-compose logs client-" in proc.stderr
        assert "FUSE mounting issues: client-" in proc.stderr and "cannot mount its file system" in proc.stderr
        assert "docker exec mooseng-client-1 ls -la /dev/fuse" in proc.stderr
        no_traceback(proc)
    finally:
        demo(images, "cleanup")


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "client-entrypoint: /dev/fuse is missing in this container: run it with --device /dev/fuse --cap-add SYS_ADMIN"),
        (["--device", "/dev/fuse"], "client-entrypoint: no CAP_SYS_ADMIN: a FUSE mount needs --cap-add SYS_ADMIN"),
    ],
)
def test_client_container_without_fuse_says_what_it_needs(images, flags, message):
    proc = images.run("docker", "run", "--rm", *flags, "mooseng-client:latest")
    assert proc.returncode == 1, output(proc)
    assert message in proc.stderr and "docker exec mooseng-client-1 ls -la /dev/fuse" in proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize("image", ["mooseng-master", "mooseng-chunkserver", "mooseng-client", "mooseng-dashboard"])
def test_bad_variable_stops_the_container_with_the_key(images, image):
    flags = ["--device", "/dev/fuse", "--cap-add", "SYS_ADMIN"] if image == "mooseng-client" else []
    proc = images.run("docker", "run", "--rm", *flags, "-e", "MOOSENG_LOG_LEVEL=loud", f"{image}:latest")
    assert proc.returncode == 2, output(proc)
    assert proc.stderr.strip() == "config error: log_level = 'loud': must be one of debug, info, warning, error"


def test_images_run_as_non_root_except_the_client(images):
    for image in ("mooseng-master", "mooseng-chunkserver", "mooseng-dashboard", "mooseng-prometheus"):
        proc = images.run("docker", "run", "--rm", "--entrypoint", "id", f"{image}:latest", "-u")
        assert proc.returncode == 0 and proc.stdout.strip() != "0", f"{image}: {output(proc)}"
