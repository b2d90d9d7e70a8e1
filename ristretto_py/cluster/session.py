"""The cluster of one run: Ray started on this machine for ``local:N`` or attached to with
``ray://HOST:PORT``, and its workers (``worker.BatchWorker`` actors, one per CPU, spread over the
nodes). Used as a context manager: leaving it (at the end, on an error or on Ctrl-C) stops the
workers, which cancels whatever they still run, and disconnects (a local Ray stops with it).

A worker that dies is restarted by Ray and its unfinished calls run again (``MAX_RESTARTS``);
the calls hold everything a worker needs, so the answer does not change.
"""
import logging
import os
import socket
import time

from ..errors import ResourceError, RistrettoError
from .pool import WorkerPool

MAX_RESTARTS = 3          # per worker; its calls are retried as often
START_TIMEOUT = 120       # seconds for the workers to start (an attached cluster may be busy)
REACH_TIMEOUT = 10        # seconds for the first TCP connection to a ray:// address
ATTACH_ATTEMPTS = 3       # ray.init on a ray:// address


def import_ray():
    try:
        import ray
    except ImportError:
        raise RistrettoError("--cluster needs Ray: pip install -e \".[ray]\"") from None
    return ray


def cuda_available():
    """(whether onnxruntime can run on a CUDA GPU here, why not)."""
    import os
    import onnxruntime
    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return False, (f"this onnxruntime has no CUDA provider (it offers {', '.join(providers)});"
                       " install onnxruntime-gpu")
    if not any(os.path.exists(f"/dev/nvidia{i}") for i in range(16)):
        return False, "onnxruntime has a CUDA provider but this machine shows no NVIDIA GPU"
    return True, None


class Cluster:
    """Connect with ``with Cluster(spec, device) as cluster:``; ``cluster.pool`` runs work."""

    def __init__(self, spec, device="cpu", progress=True):
        self.spec, self.device, self.progress = spec, device, progress
        self.actors, self.places, self.pool = [], [], None
        self._ray = None
        self.started = None

    # -- connecting -----------------------------------------------------------------------------
    def __enter__(self):
        # The calls left behind when one fails are cancelled, not reported one by one.
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
        ray = self._ray = import_ray()
        self.started = time.monotonic()
        if ray.is_initialized():
            ray.shutdown()
        settings = dict(logging_level=logging.ERROR, log_to_driver=False,
                        include_dashboard=False)
        try:
            if self.spec.local:
                ray.init(address="local", num_cpus=self.spec.workers, **settings)
            else:
                self._check_reachable()
                settings.pop("include_dashboard")
                self._attach(ray, settings)
        except RistrettoError:
            raise
        except Exception as exc:     # Ray raises ConnectionError, RuntimeError, ValueError, ...
            raise RistrettoError(f"--cluster {self.spec}: Ray could not "
                                 f"{'start' if self.spec.local else 'connect'} "
                                 f"({type(exc).__name__}: {_first_line(exc)})") from None
        try:
            self._start_workers(ray)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.pool = WorkerPool(self, progress=self.progress)
        return self

    def _attach(self, ray, settings):
        """``ray.init`` on the client server; a connection the server aborts while it starts
        the session (seen on fresh clusters, now and then) is tried again."""
        for attempt in range(1, ATTACH_ATTEMPTS + 1):
            try:
                ray.init(address=self.spec.address, **settings)
                return
            except ConnectionError:
                if attempt == ATTACH_ATTEMPTS:
                    raise
                if ray.is_initialized():
                    ray.shutdown()
                time.sleep(1)

    def _check_reachable(self):
        try:
            socket.create_connection((self.spec.host, self.spec.port), REACH_TIMEOUT).close()
        except OSError as exc:
            raise RistrettoError(f"--cluster {self.spec}: cannot reach the Ray client server at "
                                 f"{self.spec.host}:{self.spec.port} "
                                 f"({exc.strerror or exc}); start one with 'ray start --head' "
                                 "(it listens on port 10001)") from None

    def _start_workers(self, ray):
        from .worker import BatchWorker
        resources = ray.cluster_resources()
        cpus = int(resources.get("CPU", 0))
        count = self.spec.workers if self.spec.local else cpus
        if count < 1:
            raise ResourceError(f"--cluster {self.spec}: the cluster offers no CPU for workers")
        options = dict(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
                       scheduling_strategy="SPREAD")
        if self.device == "cuda":
            gpus = resources.get("GPU", 0)
            if not gpus:
                raise RistrettoError(f"--device cuda: the cluster {self.spec} has no GPU")
            options["num_gpus"] = min(1.0, gpus / count)
        actor = ray.remote(BatchWorker)
        self.actors = [actor.options(**options).remote(self.device, 1) for _ in range(count)]
        try:
            self.places = ray.get([a.where.remote() for a in self.actors],
                                  timeout=START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise ResourceError(f"--cluster {self.spec}: {count} workers did not start within "
                                f"{START_TIMEOUT} s (are the cluster's CPUs taken by other "
                                "jobs?)") from None
        except ray.exceptions.RayError as exc:
            raise RistrettoError(f"--cluster {self.spec}: the workers could not start "
                                 f"({_first_line(exc)}); is ristretto-py installed on every "
                                 "node?") from None

    def __exit__(self, kind, value, traceback):
        ray = self._ray
        if ray is None:
            return False
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:          # already gone, or the connection is
                pass
        self.actors = []
        try:
            ray.shutdown()
        except Exception:
            pass
        self._ray = None
        return False

    # -- what a report says ---------------------------------------------------------------------
    @property
    def workers(self):
        return len(self.places)

    def describe(self):
        """{cluster, workers, nodes, device}: the workers the run used."""
        return {"cluster": str(self.spec), "workers": self.workers,
                "nodes": len({node for _, node in self.places}), "device": self.device}


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
