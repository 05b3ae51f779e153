"""The file systems under test: one class per target, each with setup(), mountpoint, make_cold()
and teardown(). teardown() is safe to call after a partial setup and more than once.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import BenchError, drop_kernel_caches, log, run, stop_process, wait_until

REPO = Path(__file__).resolve().parent.parent


class Target:
    name = ""
    title = ""
    storage_classes = False  # set_class/degrade/restore work (the `classes` workload)

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.description = ""  # one line for the report: versions, topology

    @property
    def mountpoint(self) -> Path:
        raise NotImplementedError

    def setup(self) -> None:
        raise NotImplementedError

    def make_cold(self) -> None:
        """Make the next read come from storage: by default, drop the kernel caches."""
        drop_kernel_caches()

    def teardown(self) -> None:
        raise NotImplementedError

    def set_class(self, directory: Path, sclass: str) -> None:
        """Give `directory` (empty) the storage class `sclass`, inherited by what is made in it."""
        raise BenchError(f"{self.title} has no storage class {sclass!r} here")

    def degrade(self) -> None:
        """Stop one storage server (restore() brings it back)."""
        raise BenchError(f"{self.title}: no storage server to stop here")

    def restore(self) -> None:
        raise BenchError(f"{self.title}: no storage server to restore here")


class LocalTarget(Target):
    name, title = "local", "local"

    @property
    def mountpoint(self) -> Path:
        return self.workdir / "fs"

    def setup(self) -> None:
        self.mountpoint.mkdir(parents=True)
        fstype = run(["findmnt", "-no", "FSTYPE", "-T", str(self.mountpoint)]).stdout.strip()
        self.description = f"a directory on the local {fstype or 'file system'}; cold = sync + drop_caches"

    def teardown(self) -> None:
        pass  # the runner removes the work directory


class MooseFSTarget(Target):
    """MooseFS CE from the Debian packages: 1 master, 3 chunkservers, 1 mfsmount, goal 2, trash 0.

    MooseFS refuses 127.0.0.0/8, so every daemon runs in a private network namespace with one
    address on its own `lo` and no route out. Only mfsmount's FUSE mount is seen from the host.
    """

    name, title = "moosefs", "MooseFS CE"
    ADDR = "10.99.0.1"
    MASTER_CL_PORT = 9421  # clients; MATOCS (chunkservers) 9420, MATOML 9419: the defaults

    def __init__(self, workdir: Path, chunkservers: int = 3, goal: int = 2):
        super().__init__(workdir)
        self.chunkservers = chunkservers
        self.goal = goal
        self.netns = f"mfsbench-{os.getpid()}"
        self._netns_made = False
        self._daemons: list[subprocess.Popen] = []  # master first, then chunkservers
        self._mount_proc: subprocess.Popen | None = None

    @property
    def mountpoint(self) -> Path:
        return self.workdir / "mnt"

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        for tool in ("mfsmaster", "mfschunkserver", "mfsmount", "mfssetgoal", "mfscli"):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} not found: apt-get install -y moosefs-master "
                                 "moosefs-chunkserver moosefs-client moosefs-cli")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._make_netns()
        self._start_master()
        for i in range(1, self.chunkservers + 1):
            self._start_chunkserver(i)
        wait_until(lambda: self._connected_chunkservers() >= self.chunkservers, 60,
                   f"{self.chunkservers} chunkservers to register with mfsmaster")
        self.mountpoint.mkdir(exist_ok=True)
        self._mount()
        self._in_netns(["mfssetgoal", "-r", str(self.goal), str(self.mountpoint)])
        self._in_netns(["mfssettrashtime", "-r", "0", str(self.mountpoint)])
        version = run(["mfsmaster", "-v"]).stdout.strip()
        self.description = (f"{version}, 1 master + {self.chunkservers} chunkservers + mfsmount "
                            f"(default options) in netns {self.netns}, goal {self.goal}, trash time 0; "
                            "cold = a fresh mfsmount (unmount, mount) + sync + drop_caches")

    def _make_netns(self) -> None:
        run(["ip", "netns", "add", self.netns])
        self._netns_made = True
        self._in_netns(["ip", "link", "set", "lo", "up"])
        self._in_netns(["ip", "addr", "add", f"{self.ADDR}/32", "dev", "lo"])
        routes = self._in_netns(["ip", "route", "show", "default"]).stdout.strip()
        if routes:  # the network rule: a lab network never has a way out
            raise BenchError(f"netns {self.netns} has a default route: {routes}")

    def _in_netns(self, cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return run(["nsenter", f"--net=/run/netns/{self.netns}", *cmd], timeout=timeout)

    def _spawn(self, logname: str, cmd: list[str]) -> subprocess.Popen:
        """Start a foreground daemon inside the namespace (nsenter execs it: same pid)."""
        with open(self.workdir / f"{logname}.log", "ab") as logfile:
            return subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", *cmd],
                                    stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def _write_cfg(self, path: Path, settings: dict[str, object]) -> Path:
        path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        return path

    def _start_master(self) -> None:
        data = self.workdir / "master"
        data.mkdir()
        shutil.copy("/var/lib/mfs/metadata.mfs.empty", data / "metadata.mfs")
        exports = data / "mfsexports.cfg"
        exports.write_text("* / rw,alldirs,maproot=0:0\n")
        cfg = self._write_cfg(data / "mfsmaster.cfg", {
            "WORKING_USER": "root", "WORKING_GROUP": "root", "DATA_PATH": data,
            "EXPORTS_FILENAME": exports, "TOPOLOGY_FILENAME": data / "mfstopology.cfg",
            "MATOCL_LISTEN_PORT": self.MASTER_CL_PORT,
        })
        (data / "mfstopology.cfg").write_text("")
        self._daemons.append(self._spawn("mfsmaster", ["mfsmaster", "-f", "-c", str(cfg)]))

    def _start_chunkserver(self, i: int) -> None:
        data = self.workdir / f"chunkserver{i}"
        (data / "hdd").mkdir(parents=True)
        hdd = data / "mfshdd.cfg"
        hdd.write_text(f"{data / 'hdd'}\n")
        cfg = self._write_cfg(data / "mfschunkserver.cfg", {
            "WORKING_USER": "root", "WORKING_GROUP": "root", "DATA_PATH": data,
            "HDD_CONF_FILENAME": hdd, "HDD_LEAVE_SPACE_DEFAULT": "64MiB",
            "MASTER_HOST": self.ADDR, "CSSERV_LISTEN_PORT": 9422 + 10 * i,
        })
        self._daemons.append(self._spawn(f"mfschunkserver{i}", ["mfschunkserver", "-f", "-c", str(cfg)]))

    def _connected_chunkservers(self) -> int:
        self._check_daemons()
        proc = run(["nsenter", f"--net=/run/netns/{self.netns}", "mfscli", "-H", self.ADDR,
                    "-P", str(self.MASTER_CL_PORT), "-SCS", "-s", "|"], timeout=20, check=False)
        # one line per chunkserver: "chunk servers:|ip|port|id|-|version|...|used bytes|total bytes|..."
        # counted once its disks are scanned (total space known)
        rows = [line.split("|") for line in proc.stdout.splitlines()]
        return sum(1 for row in rows if len(row) > 10 and row[1] == self.ADDR and row[10].isdigit()
                   and int(row[10]) > 0)

    def _check_daemons(self) -> None:
        for proc in self._daemons:
            if proc.poll() is not None:
                raise BenchError(f"{Path(proc.args[2]).name} exited with {proc.returncode} "
                                 f"(logs in {self.workdir})")

    def _mount(self) -> None:
        self._mount_proc = self._spawn("mfsmount", [
            "mfsmount", "-f", str(self.mountpoint), "-H", self.ADDR, "-P", str(self.MASTER_CL_PORT)])

        def mounted() -> bool:
            if self._mount_proc.poll() is not None:
                raise BenchError(f"mfsmount exited with {self._mount_proc.returncode}")
            return os.path.ismount(self.mountpoint)

        wait_until(mounted, 30, "mfsmount")

    def _unmount(self) -> None:
        if os.path.ismount(self.mountpoint):
            if run(["umount", str(self.mountpoint)], check=False).returncode != 0:
                log(f"{self.name}: umount failed, detaching lazily")
                run(["umount", "-l", str(self.mountpoint)], check=False)
        stop_process(self._mount_proc)
        self._mount_proc = None

    # -- cold caches, teardown ---------------------------------------------------------------

    def make_cold(self) -> None:
        """A fresh mfsmount (empty client caches) and empty kernel caches on the host."""
        self._unmount()
        self._mount()
        drop_kernel_caches()

    def teardown(self) -> None:
        try:
            self._unmount()
        finally:
            for proc in reversed(self._daemons):  # chunkservers first, master last
                stop_process(proc, grace=20)
            self._daemons.clear()
            if self._netns_made:
                run(["ip", "netns", "del", self.netns], check=False)
                self._netns_made = False


class MooseNGTarget(Target):
    """Our cluster, as mooseng.localcluster starts it: 1 master, 3 chunkservers, 1 client mount.

    The default storage class (2 copies) applies to the whole tree. port_base 0 lets LocalCluster
    pick a free block of ports on 127.0.0.1 (so a running demo or test cluster is no conflict).
    """

    name, title = "mooseng", "MooseNG"
    storage_classes = True
    CLIENT = 1

    def __init__(self, workdir: Path, port_base: int | None = 0):
        super().__init__(workdir)
        self.port_base = port_base
        self.cluster = None

    @property
    def mountpoint(self) -> Path:
        return Path(self.cluster.mountpoint(self.CLIENT))

    def setup(self) -> None:
        localcluster = _import_localcluster()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster = localcluster.LocalCluster(root=self.workdir / "cluster", masters=1, chunkservers=3,
                                                 clients=1, port_base=self.port_base)
        self.cluster.start()
        version = getattr(sys.modules.get("mooseng"), "__version__", "")
        self.description = (f"mooseng {version} (Python {sys.version.split()[0]}) via mooseng.localcluster: "
                            "1 master + 3 chunkservers + 1 FUSE client on 127.0.0.1, storage class default "
                            "(2 copies); cold = a fresh client process (LocalCluster.restart) + sync + drop_caches")

    def make_cold(self) -> None:
        """A fresh client process (empty client caches), then empty kernel caches."""
        self.cluster.restart(f"client-{self.CLIENT}")
        drop_kernel_caches()

    def teardown(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    DEGRADED = "chunkserver-3"

    def set_class(self, directory: Path, sclass: str) -> None:
        """`mooseng setclass` through the mount, as an operator does."""
        env = dict(os.environ, PYTHONPATH=str(REPO / "daemons"))
        run([sys.executable, "-m", "mooseng.cli.main", "--master", ",".join(self.cluster.master_endpoints),
             "setclass", sclass, str(directory)], env=env, cwd=REPO)

    def degrade(self) -> None:
        """Kill one of the three chunkservers: an archive chunk loses the 4 parts it held there."""
        self.cluster.kill(self.DEGRADED)

    def restore(self) -> None:
        self.cluster.restart(self.DEGRADED)


def _import_localcluster():
    """mooseng.localcluster, from the installed package or else from the source tree."""
    try:
        return importlib.import_module("mooseng.localcluster")
    except ImportError:
        pass
    sys.path.append(str(REPO / "daemons"))
    sys.modules.pop("mooseng", None)
    try:
        return importlib.import_module("mooseng.localcluster")
    except ImportError as e:
        raise BenchError(f"mooseng.localcluster is not available: {e}") from None


TARGETS: dict[str, type[Target]] = {t.name: t for t in (LocalTarget, MooseFSTarget, MooseNGTarget)}
