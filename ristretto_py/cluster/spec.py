"""What ``--cluster`` and ``--device`` name, read as argparse types (a bad spelling is a usage
error, exit 2).

* ``local:N``: start a Ray instance on this machine for the run, with N workers (one CPU each).
* ``ray://HOST:PORT``: attach to a running cluster through its Ray Client server (``ray start
  --head`` listens on port 10001 by default); one worker per CPU the cluster offers.
* ``--device cuda``: run the nets with onnxruntime's CUDA provider (``onnxruntime-gpu`` and a
  GPU needed, on every worker); ``cpu`` (the default) everywhere else.
"""
import argparse
import dataclasses
import re

DEVICES = ("cpu", "cuda")
_LOCAL = re.compile(r"local:(\d+)")
_ATTACH = re.compile(r"ray://([A-Za-z0-9.\-_]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """``workers`` for a local cluster, ``host``/``port`` for an attached one."""
    workers: int = None
    host: str = None
    port: int = None

    @property
    def local(self):
        return self.host is None

    @property
    def address(self):
        return None if self.local else f"ray://{self.host}:{self.port}"

    def __str__(self):
        return f"local:{self.workers}" if self.local else self.address


def parse_cluster(text):
    """``local:N`` or ``ray://HOST:PORT`` as a ClusterSpec."""
    text = str(text).strip()
    match = _LOCAL.fullmatch(text)
    if match:
        workers = int(match.group(1))
        if workers < 1:
            raise argparse.ArgumentTypeError("local:N needs at least 1 worker")
        return ClusterSpec(workers=workers)
    match = _ATTACH.fullmatch(text)
    if match:
        port = int(match.group(2))
        if not 0 < port < 65536:
            raise argparse.ArgumentTypeError(f"port {port} is out of range (1 to 65535)")
        return ClusterSpec(host=match.group(1).strip("[]"), port=port)
    raise argparse.ArgumentTypeError(f"{text!r}: use local:N (start Ray here with N workers) or "
                                     "ray://HOST:PORT (attach to a running cluster)")


parse_cluster.__name__ = "cluster"


def parse_device(text):
    text = str(text).strip().lower()
    if text not in DEVICES:
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu or cuda")
    return text


parse_device.__name__ = "device"
