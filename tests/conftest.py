import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

# tests import the tiny-model helpers as a plain module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def fresh_kernel_checks():
    """Forget the cached kernel-backend capability checks before and after the test (it may patch packages)."""
    from hf_tvd_loss.ops import kernels

    kernels.kernel_problem.cache_clear()
    yield
    kernels.kernel_problem.cache_clear()


@pytest.fixture
def kernels_on_cpu(fresh_kernel_checks):
    """Let the kernel backends run on CPU tensors; cce through cut-cross-entropy's own torch_compile implementation
    (:class:`hf_tvd_loss.ops.kernels.KernelSettings`); the settings in use before are restored afterwards.

    That implementation's Python runs eagerly here (``torch.compiler.set_stance("force_eager")``): what the tests judge
    is this library's call into the package (arguments, per-token output, ignored tokens, gradients), not inductor's
    C++ code generation of it, which took 29 s of a cold run (the first compile 21 s) and is no path a user trains
    on (cce on a GPU is its Triton kernel; tests/test_kernels_interpreted.py runs that one, interpreted)."""
    import torch

    from hf_tvd_loss.ops import kernels

    previous = kernels.set_kernel_settings(kernels.KernelSettings(devices=("cpu", "cuda"), cce_impl="torch_compile"))
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        kernels.set_kernel_settings(previous)


@pytest.fixture(scope="session")
def sharded_gradient_runs(request, tmp_path_factory):
    """ONE ``torchrun --nproc_per_node 2`` launch for the sharded-gradient checks of tests/test_fsdp.py (fsdp_worker
    ``grads``: OUT/grads.json) and tests/test_zero3.py (zero3_worker: OUT/zero3.json), each part only when a collected
    test reads it; the processes and their imports (torch, transformers, DeepSpeed) are then paid once. A failing
    launch errors the tests of both files (the assertion shows the launch's output)."""
    from test_fsdp import HERE, deepspeed_python, torchrun

    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    modes = [mode for mode, fixture in (("grads", "fsdp_results"), ("zero3", "zero3_results")) if fixture in wanted]
    python = deepspeed_python() if "zero3" in modes else None  # .venv-deepspeed: .venv plus DeepSpeed
    out = tmp_path_factory.mktemp("sharded")
    if modes:
        torchrun([os.path.join(HERE, "fsdp_worker.py"), "+".join(modes), str(out)], port=29612, python=python)
    return out


# ------------------------------------------------------------------------------------------------ background jobs
# Two slow, single-process preparations run in the background at the lowest priority (nice 19), one after the
# other, from the end of collection: the quick benchmark (``python -m benchmarks.bench --quick``, ~24 s of
# subprocesses) and the real model's conversion (scripts/prepare_model.py, ~20 s of mostly single-threaded GGUF
# parsing). Most of the suite runs on one core of two; these fill the other. The tests that read their results are
# moved to the end of the session (pytest_collection_modifyitems), by which time the jobs are done; a job starts
# only when a collected test needs it. Each job writes only inside its own mkdtemp folder, removed when the session
# ends; one still running then (an interrupted run too) is killed with the processes it started.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _job_commands(folder: str) -> dict[str, list[str]]:
    """fixture name -> the command its job runs (``folder``: the job's own folder), in the order they run: the order
    in which the tests moved to the end read them."""
    return {
        # --jobs 1: its memory-measuring children one at a time, so that the job keeps to one core
        "quick_benchmark": [sys.executable, "-m", "benchmarks.bench", "--quick", "--jobs", "1",
                            "--out", os.path.join(folder, "bench")],
        "smollm2_conversion": [sys.executable, os.path.join(ROOT, "scripts", "prepare_model.py"),
                               "--output_dir", os.path.join(folder, "smollm2")],
        # a wheel of this checkout in a fresh environment, the hf-tvd-loss command run from another folder
        "installed_wheel": [sys.executable, os.path.join(ROOT, "tests", "wheel_job.py"), folder],
    }  # fmt: skip


class BackgroundJobs:
    """Runs commands one after the other in a thread; :meth:`result` waits for one's exit."""

    def __init__(self) -> None:
        self.folders: dict[str, str] = {}
        self.done: dict[str, threading.Event] = {}
        self.returncodes: dict[str, int] = {}
        self.lock = threading.Lock()
        self.current: subprocess.Popen | None = None
        self.stopped = False
        self.thread: threading.Thread | None = None

    def start(self, names: list[str]) -> None:
        commands = {}
        for name in names:
            self.folders[name] = tempfile.mkdtemp(prefix=f"hf_tvd_tests_{name}-")
            self.done[name] = threading.Event()
            commands[name] = _job_commands(self.folders[name])[name]
        self.thread = threading.Thread(target=self._run, args=(commands,), daemon=True)
        self.thread.start()

    def _run(self, commands: dict[str, list[str]]) -> None:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        }
        # Lowest priority: the jobs take only the time the tests leave idle. At equal priority they slowed the
        # tests that run torch on both cores (its threads wait for each other) by more than they saved.
        nice = ["nice", "-n", "19"] if shutil.which("nice") else []
        for name, command in commands.items():
            folder = self.folders[name]
            command = nice + command
            try:
                with self.lock:
                    if self.stopped:
                        break
                    with (
                        open(os.path.join(folder, "stdout"), "w") as out,
                        open(os.path.join(folder, "stderr"), "w") as err,
                    ):
                        self.current = subprocess.Popen(
                            command, stdout=out, stderr=err, env=env, cwd=ROOT, start_new_session=True
                        )
                self.returncodes[name] = self.current.wait()
            except Exception as exc:  # the job could not start: its test fails with the reason
                with open(os.path.join(folder, "stderr"), "a") as err:
                    err.write(f"background job {name!r} could not run {command}: {exc!r}\n")
                self.returncodes[name] = -1
            finally:
                self.done[name].set()

    def result(self, name: str, timeout: float = 900) -> tuple[int, str, str, str]:
        """``(returncode, stdout, stderr, folder)`` of job ``name`` once it has ended."""
        assert name in self.done, f"background job {name!r} was not started at collection (tests/conftest.py)"
        assert self.done[name].wait(timeout), f"background job {name!r} still running after {timeout} s"
        folder = self.folders[name]
        with open(os.path.join(folder, "stdout")) as out, open(os.path.join(folder, "stderr")) as err:
            return self.returncodes[name], out.read(), err.read(), folder

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            if self.current is not None and self.current.poll() is None:
                os.killpg(self.current.pid, signal.SIGKILL)  # the job and the subprocesses it started
        if self.thread is not None:
            self.thread.join()
        for folder in self.folders.values():
            shutil.rmtree(folder, ignore_errors=True)


_JOBS = BackgroundJobs()


def _jobs_read_by(item) -> set[str]:
    """The jobs whose fixture the test uses, directly or through another fixture."""
    return {name for name in _job_commands("") if name in getattr(item, "fixturenames", ())}


def pytest_collection_modifyitems(session, config, items):
    """The tests that read a background job's result run last (in their collected order)."""
    items[:] = [item for item in items if not _jobs_read_by(item)] + [item for item in items if _jobs_read_by(item)]


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    wanted = set().union(*(_jobs_read_by(item) for item in session.items))
    _JOBS.start([name for name in _job_commands("") if name in wanted])


def pytest_sessionfinish(session):
    _JOBS.stop()


@pytest.fixture(scope="session")
def smollm2_conversion():
    """``(returncode, stdout, stderr, folder)`` of the background ``scripts/prepare_model.py`` run; the checkpoint
    is ``folder/smollm2``."""
    return _JOBS.result("smollm2_conversion")


@pytest.fixture(scope="session")
def quick_benchmark():
    """``(returncode, stdout, stderr, folder)`` of the background ``python -m benchmarks.bench --quick`` run; its
    report is ``folder/bench``."""
    return _JOBS.result("quick_benchmark")


@pytest.fixture(scope="session")
def installed_wheel():
    """``(returncode, stdout, stderr, folder)`` of the background ``tests/wheel_job.py`` run; its findings are
    ``folder/result.json``."""
    return _JOBS.result("installed_wheel")
