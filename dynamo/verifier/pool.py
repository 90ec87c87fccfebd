"""Hard wall-clock limit for the symbolic stage: persistent worker processes, killed and replaced on timeout.

Workers are plain subprocesses (`worker_main` in a fresh interpreter) speaking one JSON line per job over
pipes, so the limit holds from any thread and inside other worker processes (no signal.alarm), and no
`fork` of a process holding CUDA or threads is needed. Started lazily on the first pair that needs
SymPy; killed at interpreter exit; a worker also exits when its stdin closes (the parent died).
"""
import atexit
import collections
import json
import os
import select
import subprocess
import sys
import threading
import time

STARTUP_TIMEOUT_S = 60.0  # python + sympy import on a loaded machine; not counted against a job
WORKER_MEMORY_BYTES = 4 << 30  # address-space cap per worker: a runaway SymPy job fails, not the host
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EQUAL, NOT_EQUAL, ERROR, TIMEOUT = 1, 0, -1, -2  # job outcome codes


class _Worker:
    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = _REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from dynamo.verifier.pool import worker_main; worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.job = None  # index of the job in flight
        self.deadline = None

    def send(self, job: int, resp: str, ref: str, timeout_s: float) -> None:
        self.proc.stdin.write((json.dumps([job, resp, ref]) + "\n").encode())
        self.proc.stdin.flush()
        self.job, self.deadline = job, time.monotonic() + timeout_s

    def read_lines(self) -> list[bytes]:
        data = os.read(self.fd, 1 << 16)
        if not data:
            raise EOFError
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return lines

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass


class WorkerPool:
    """Runs (response, reference) jobs on up to n workers, each job under its own deadline."""

    def __init__(self):
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()  # one batch at a time; callers from several threads queue here

    def run(self, jobs: list[tuple[str, str]], n_workers: int, timeout_s: float) -> list[int]:
        """Outcome code per job, in order: EQUAL, NOT_EQUAL, ERROR or TIMEOUT."""
        with self.lock:
            n = max(1, min(n_workers, len(jobs)))
            while len(self.workers) < n:
                self.workers.append(_Worker())
            results = [None] * len(jobs)
            todo = collections.deque(range(len(jobs)))
            failed_starts = 0
            while todo or any(w.job is not None for w in self.workers[:n]):
                for w in self.workers[:n]:
                    if w.ready and w.job is None and todo:
                        j = todo.popleft()
                        try:
                            w.send(j, jobs[j][0], jobs[j][1], timeout_s)
                        except OSError:  # the worker died between jobs: retry the job elsewhere
                            todo.appendleft(j)
                            self._replace(w)
                waiting = [w for w in self.workers[:n] if w.job is not None or not w.ready]
                now = time.monotonic()
                wake = min(w.deadline if w.job is not None else w.started + STARTUP_TIMEOUT_S for w in waiting)
                readable, _, _ = select.select([w.fd for w in waiting], [], [], max(0.0, wake - now))
                for w in waiting:
                    if w.fd not in readable:
                        continue
                    try:
                        lines = w.read_lines()
                    except (EOFError, OSError):  # crashed (e.g. out of memory): the job failed
                        if w.job is not None:
                            results[w.job] = ERROR
                        else:
                            failed_starts += 1
                        self._replace(w)
                        continue
                    for line in lines:
                        if line == b"ready":
                            w.ready, failed_starts = True, 0
                        elif line:
                            job, code = json.loads(line)
                            if job == w.job:
                                results[job], w.job = code, None
                now = time.monotonic()
                for w in list(self.workers[:n]):
                    if w.job is not None and now > w.deadline:
                        results[w.job] = TIMEOUT
                        self._replace(w)
                    elif not w.ready and now > w.started + STARTUP_TIMEOUT_S:
                        failed_starts += 1
                        self._replace(w)
                if failed_starts >= 3:  # workers cannot start at all: fail the rest instead of spinning
                    for j in todo:
                        results[j] = ERROR
                    todo.clear()
                    for w in self.workers[:n]:
                        if w.job is not None:
                            results[w.job], w.job = ERROR, None
            return results

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker()

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []


    def forget_after_fork(self) -> None:
        """In a forked child: the inherited workers belong to the parent; drop our copies of their pipes."""
        for w in self.workers:
            for f in (w.proc.stdin, w.proc.stdout):
                try:
                    f.close()
                except Exception:
                    pass
        self.workers, self.lock = [], threading.Lock()


POOL = WorkerPool()
atexit.register(POOL.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOL.forget_after_fork)


def worker_main() -> None:
    """Worker loop: read [job, resp, ref] lines, answer [job, code] lines."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills us at exit
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by a library goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    from dynamo.verifier.equivalence import symbolic_equal

    protocol.write(b"ready\n")
    protocol.flush()
    for line in sys.stdin.buffer:
        job, resp, ref = json.loads(line)
        try:
            code = EQUAL if symbolic_equal(resp, ref) else NOT_EQUAL
        except Exception:
            code = ERROR
        protocol.write((json.dumps([job, code]) + "\n").encode())
        protocol.flush()
