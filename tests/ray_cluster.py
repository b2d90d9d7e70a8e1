"""A real Ray cluster for the ``--cluster`` tests: a head and a second node on 127.0.0.1, each
with one CPU (two workers on two nodes), started with ``ray start`` as an operator would and
stopped at the end; optionally inside a mount namespace where some folders are hidden (a node
that cannot read a path the driver can)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, nodes=2, hidden=()):
        self.temp = tempfile.mkdtemp(prefix="ray")       # short: Ray's socket paths are limited
        self.port, self.client_port = free_port(), free_port()
        self.hidden = [str(p) for p in hidden]
        self.sessions = []
        self.address = f"ray://127.0.0.1:{self.client_port}"
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                  "--object-store-memory", str(200 * 2 ** 20), "--disable-usage-stats"]
        self._ray(["start", "--head", "--port", str(self.port), "--ray-client-server-port",
                   str(self.client_port), "--temp-dir", self.temp, "--include-dashboard",
                   "false", *common])
        for _ in range(nodes - 1):
            self._ray(["start", "--address", f"127.0.0.1:{self.port}", *common])
        self._wait_for_client_server()

    def _wait_for_client_server(self, seconds=120):
        """``ray start`` returns before the Ray Client server serves: wait until a client
        connects (in a process of its own, as the tools' tests then do)."""
        deadline, error = time.monotonic() + seconds, None
        probe = ("import ray, sys; ray.init(sys.argv[1], logging_level='ERROR'); "
                 "ray.shutdown()")
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.client_port), 1).close()
            except OSError as exc:
                error = exc
                time.sleep(0.2)
                continue
            done = subprocess.run([sys.executable, "-c", probe, self.address],
                                  capture_output=True, text=True, timeout=seconds)
            if done.returncode == 0:
                return
            error = done.stderr.strip().splitlines()[-1:] or done.returncode
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"no Ray client could connect to {self.address} within {seconds} s "
                           f"({error})")

    def _ray(self, arguments):
        command = [shutil.which("ray") or "ray", *arguments]
        if self.hidden:     # the node's processes live in a namespace where these are empty
            mounts = " && ".join(f"mount -t tmpfs none '{p}'" for p in self.hidden)
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f"{mounts} && exec {' '.join(command)}"]
        # Token authentication off, whatever ~/.ray holds: a joining node and the head must agree.
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
        # A session of its own: every process Ray starts for the node stays in it (the daemons
        # and the workers they spawn), so that ``stop`` finds them all and nothing else.
        starter = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env, start_new_session=True)
        self.sessions.append(starter.pid)
        _, stderr = starter.communicate(timeout=180)
        done = subprocess.CompletedProcess(command, starter.returncode, "", stderr)
        if done.returncode:
            self.stop()
            raise RuntimeError(f"ray {arguments[0]} failed: {done.stderr[-2000:]}")

    def processes(self):
        """Process ids of this cluster (not of other Ray instances on the machine): those in
        the sessions its ``ray start`` commands began."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if os.getsid(int(entry)) in self.sessions:
                    found.append(int(entry))
            except OSError:
                continue
        return found

    def stop(self):
        for _ in range(5):
            found = self.processes()
            if not found:
                break
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.temp, ignore_errors=True)


def can_hide_folders():
    """Whether this machine lets a process mount over a folder in its own namespace."""
    if not shutil.which("unshare"):
        return False
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           "mount -t tmpfs none /mnt"], capture_output=True)
    return done.returncode == 0
