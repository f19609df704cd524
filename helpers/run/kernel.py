"""One Jupyter kernel for every template of a task's run.

A template's own computation on a small model takes a second or two; starting a kernel, importing
torch, transformers and TransformerLens, and converting the model through the bridge took 15-25 s, once
per template. :class:`TemplateKernel` starts one kernel per task run and executes the templates in it one
after another with papermill. Before each template the kernel's namespace is emptied (IPython's
``%reset``) and its cell counter restarted, so a template sees nothing its predecessor defined and its
cells are numbered from 1, as in a fresh kernel; what stays is what is not the template's own: imported
modules and the converted model, which :func:`helpers.notebook.session.start_session` asks
:func:`helpers.models.load.load_model` to keep (``reuse=True``). Nothing an analysis computes depends on it: the
tests compare the figures of a run in one kernel with those of a kernel per template.

Two things keep the cost between templates small:

- :meth:`TemplateKernel.warm_up` has the kernel import the helpers and convert the model while the
  command line is still validating the task (on another core). A model that fails to load there is left
  for the template to load again, so its error and fix show in the notebook as before.
- After the warm-up and after each reset, everything still alive is moved out of the garbage collector's
  sight (``gc.freeze``): it is the modules and the model, which never become garbage. Emptying the
  namespace then took about 0.05 s instead of 2 s (measured on the demo model; most of those 2 s were
  full collections walking every object torch, transformers and plotly had created).

And one keeps the kernel's memory to what each template needs: after each reset the memory the previous
template freed is handed back to the system (:func:`release_memory`), so the next template does not start
from the high-water mark of the one before.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import importlib
import os
import signal
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from helpers.paths import REPO_ROOT

# Run before each template: the namespace emptied (%reset also collects garbage), the cell counter
# restarted, the working directory made the notebook's, and what survived frozen (module docstring).
_RESET = """\
get_ipython().run_line_magic('reset', '-f')
get_ipython().execution_count = 1
import gc as __gc, os as __os
__os.chdir({folder!r})
__gc.freeze()
from helpers.run.kernel import release_memory as __release_memory
__release_memory()
del __gc, __os, __release_memory
"""

# Run once, as soon as the kernel has started: see warm_up.
_WARM_UP = """\
import gc as __gc
try:
    from helpers.run.kernel import warm_up as __warm_up
    __warm_up({model!r}, device={device!r}, dtype={dtype!r})
except Exception:
    pass  # the template loads the model again and shows the error with its fix
__gc.collect()
__gc.freeze()
get_ipython().run_line_magic('reset', '-f')
from helpers.run.kernel import release_memory as __release_memory
__release_memory()
del __release_memory
"""

# What the templates import (the warm-up imports them ahead of the first one; tests/test_templates.py checks
# that this lists every helpers module a template imports).
TEMPLATE_MODULES = (
    "helpers.analyses.head_ablation", "helpers.analyses.ablations", "helpers.analyses.compare",
    "helpers.analyses.copy_scores", "helpers.analyses.dla", "helpers.analyses.head_functions", "helpers.analyses.heads",
    "helpers.analyses.important_heads", "helpers.analyses.neurons", "helpers.analyses.vectors",
    "helpers.analyses.patching", "helpers.analyses.patching.engine", "helpers.analyses.circuits.head_circuits",
    "helpers.analyses.circuits.discovery", "helpers.analyses.circuits.graph", "helpers.analyses.circuits.graph_runner",
    "helpers.analyses.circuits.head_roles", "helpers.analyses.sweep",
    "helpers.figures.circuits", "helpers.figures.compare", "helpers.figures.copy_scores", "helpers.figures.discovery",
    "helpers.figures.dla", "helpers.figures.head_functions", "helpers.figures.heads", "helpers.figures.neurons",
    "helpers.figures.patching", "helpers.figures.sweep", "helpers.figures.vectors", "helpers.figures.viz",
    "helpers.notebook.reports", "helpers.notebook.session", "helpers.results",
)


def warm_up(model: str, *, device: str = "auto", dtype: str = "float32") -> None:
    """In the kernel: import the templates' helpers and convert ``model`` once for the run
    (:func:`helpers.models.load.load_model` with ``reuse=True``, as every template's session asks)."""

    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from helpers.models.load import load_model

    for name in TEMPLATE_MODULES:
        importlib.import_module(name)
    load_model(model, device=device, dtype=dtype, reuse=True)


def release_memory() -> bool:
    """Hand the memory this process has freed back to the system (glibc's ``malloc_trim``); True if it
    could. Freed tensors below glibc's mapping threshold (32 MB at most) stay in the process's heap for
    reuse, so a kernel that ran one template would start the next with that template's peak still
    resident. Elsewhere (macOS, musl) this does nothing: there is no such call."""

    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


KERNEL_NAME = "python3"
# Progress bars would be stored in the executed notebooks as stderr blocks, often frozen part-way: the
# kernel draws none, and the command line shows each template's progress and time instead.
_NO_PROGRESS_BARS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
# The figures' static PNGs are drawn by the runner, beside the kernel (helpers.figures.images.add_static_images).
_RUNNER_SETTINGS = {**_NO_PROGRESS_BARS, "SUITE_STATIC_IMAGES_BY_RUNNER": "1"}


# torch's worker threads sleep as soon as a parallel operation ends instead of spinning for the next one
# (OpenMP's default), so the core they leave is free for the runner's notebook finisher (helpers.run.execute). On
# the demo (2 cores) the cells took 21.6 s in all instead of 31.8 s. Only the waiting changes: the threads
# and how the work is split between them are the same, and so are the numbers. A value you set is kept.
_THREADS_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}

# glibc serves a tensor below its mapping threshold from the heap, and raises that threshold (up to 32 MB)
# each time it frees a mapped one; what the heap served stays resident after it is freed, in holes between
# live tensors, until the next malloc_trim. Activation-sized tensors (1-32 MB at GPT-2 small's size) then
# inflate a template's peak by what its earlier steps freed. A fixed 4 MB threshold hands each larger
# tensor back to the system as it is freed. Measured on the GPT-2-small-shaped suite (64 prompts, two
# separate runs of tests/bench_suite.py, without and with it): peaks 4.00 -> 3.82 GiB (circuit_discovery),
# 3.97 -> 3.89 (circuit), 3.56 -> 3.19 (patching); whole run 598 s and 608 s, within the machine's
# run-to-run spread. A 1 MB threshold saved more (every template under 3.62 GiB) but slowed a single
# EAP-IG from about 20 s to 25-30 s. Allocation only: the numbers are the same. Ignored where the C library
# is not glibc. A value you set is kept.
_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20)}


def kernel_environment() -> dict[str, str]:
    """The kernel's environment: this process's, with this checkout's ``helpers`` importable, no progress
    bars, the figures' PNGs left to the runner, torch's threads not spinning when idle, and freed tensors
    of 4 MB or more handed back to the system at once."""
    env = {**_THREADS_WAIT, **_MALLOC, **os.environ, **_RUNNER_SETTINGS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def kernelspec_metadata() -> dict[str, str]:
    """The notebook metadata JupyterLab writes for the kernel the templates run in (its display name is
    the installed kernel spec's, e.g. "Python 3 (ipykernel)"): stored as is, the notebook opens unmodified."""
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    return {"display_name": spec.display_name, "language": spec.language, "name": KERNEL_NAME}


# How the templates' kernels start: the kernel app logs errors only (its warning about TCP on localhost is
# not for a researcher), and keeps no input history (a kernel that runs several notebooks would otherwise
# print "Session/line number was not unique in database" into one of them, and nothing reads the history).
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR", "--HistoryManager.enabled=False")


def execute_template(template: Path, notebook: Path, parameters: dict[str, Any], *, km: Any = None) -> None:
    """Execute ``template`` into ``notebook`` with ``parameters`` injected, in the kernel managed by ``km``
    (a fresh kernel, started in the notebook's folder, when None).

    Raises:
        papermill.PapermillExecutionError: a cell raised.
        nbclient.exceptions.DeadKernelError: the kernel died.
    """
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    import papermill as pm

    _register_engine()
    # a kernel of its own starts with the shared kernel's arguments (and says as little)
    options: dict[str, Any] = {"km": km} if km is not None else {"extra_arguments": list(KERNEL_ARGUMENTS)}
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", *_RUNNER_SETTINGS, *_THREADS_WAIT)}
    environment = kernel_environment()
    os.environ.update({name: environment[name] for name in saved})  # a fresh kernel inherits them
    try:
        pm.execute_notebook(
            str(template), str(notebook), parameters=parameters, cwd=str(notebook.parent), kernel_name=KERNEL_NAME,
            progress_bar=False, log_output=False, engine_name="suite",
            stderr_file=sys.stderr,  # what the notebooks print to stderr (warnings) shows on the command line too
            **options,
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class TemplateKernel:
    """A kernel kept for one run's templates (see the module docstring); a context manager. Each
    template runs in its notebook's folder, whatever ``cwd`` the kernel started in."""

    def __init__(self, cwd: Path | None = None):
        # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
        from jupyter_client.manager import AsyncKernelManager
        from nbclient.util import run_sync

        self.km = AsyncKernelManager(kernel_name=KERNEL_NAME)
        self._warming: Any = None
        run_sync(self.km.start_kernel)(cwd=str(cwd or Path.cwd()), env=kernel_environment(),
                                       extra_arguments=list(KERNEL_ARGUMENTS))

    def warm_up(self, model: str, *, device: str = "auto", dtype: str = "float32") -> None:
        """Start importing the helpers and converting ``model`` in the kernel, and return at once; the
        first :meth:`run` waits for it (module docstring)."""

        code = _WARM_UP.format(model=model, device=device, dtype=dtype)

        def warm() -> None:
            try:
                self.run_code(code, output=_to_stderr)
            except Exception:  # noqa: BLE001 - the first template meets the same problem and reports it
                pass

        # a daemon thread: a run stopped during the warm-up (Ctrl-C) exits without waiting for it
        self._warming = threading.Thread(target=warm, name="kernel-warm-up", daemon=True)
        self._warming.start()

    @property
    def pid(self) -> int:
        """The kernel's process id."""
        return int(self.km.provisioner.process.pid)

    def run(self, template: Path, notebook: Path, parameters: dict[str, Any]) -> None:
        """Empty the namespace, then execute ``template`` (see :func:`execute_template`)."""
        self.empty(notebook.parent)
        execute_template(template, notebook, parameters, km=self.km)

    def empty(self, folder: Path) -> None:
        """Wait for the warm-up, empty the namespace, restart the cell counter and move to ``folder``."""
        if self._warming is not None:
            warming, self._warming = self._warming, None
            warming.join()
        self.run_code(_RESET.format(folder=str(folder.resolve())), failure="could not empty the kernel's namespace")

    def run_code(self, code: str, *, failure: str | None = None, output: Any = None) -> None:
        """Run ``code`` silently in the kernel and wait for it; a reply other than ok raises with
        ``failure`` (or is ignored when it is None). What the code prints goes to ``output`` (a message
        hook), or nowhere."""
        # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
        from nbclient.exceptions import DeadKernelError
        from nbclient.util import run_sync

        if not run_sync(self.km.is_alive)():
            raise DeadKernelError("the run's kernel is not running")
        client = self.km.client()
        client.start_channels()
        try:
            run_sync(client.wait_for_ready)(timeout=60)
            reply = run_sync(client.execute_interactive)(code, silent=True, store_history=False, timeout=None,
                                                         output_hook=output or (lambda message: None))
            if failure is not None and reply["content"]["status"] != "ok":
                raise RuntimeError(f"{failure}: {reply['content']}")
        finally:
            client.stop_channels()

    def close(self) -> None:

        # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
        from jupyter_core.utils import ensure_event_loop
        from nbclient.util import run_sync

        # A run stopped in the middle of a cell (Ctrl-C) leaves nbclient's tasks pending on this thread's
        # event loop: the shutdown below would wake them, and they would report the kernel's death.
        for task in asyncio.all_tasks(ensure_event_loop()):
            task.cancel()
        try:
            if self._warming is not None and self._warming.is_alive():  # stopped before its first template
                run_sync(self.km.interrupt_kernel)()
                self._warming.join(timeout=10)
            if run_sync(self.km.is_alive)():
                run_sync(self.km.shutdown_kernel)(now=True)
        finally:
            run_sync(self.km.cleanup_resources)()

    def __enter__(self) -> TemplateKernel:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _to_stderr(message: dict[str, Any]) -> None:
    """What the warm-up prints (the model's loading messages) goes to the command line: no notebook
    shows it, since the template that would have loaded the model finds it converted."""
    if message.get("msg_type") == "stream":
        sys.stderr.write(message["content"].get("text", ""))


_registered = False


def _register_engine() -> None:
    """papermill's nbclient engine, which also stops the kernel client it made for a kernel it does not own
    (papermill leaves that client's channels open)."""
    global _registered
    if _registered:
        return
    # deferred: the command line reports a bad task before importing torch, transformers or Jupyter's libraries
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    class SuiteClient(PapermillNotebookClient):
        """nbclient turns Ctrl-C into a request to stop the kernel and goes on waiting for it; here Ctrl-C
        stays a KeyboardInterrupt, which stops the run (the runner then stops the kernel and says so)."""

        async def async_start_new_kernel_client(self) -> Any:

            client = await super().async_start_new_kernel_client()
            loop = asyncio.get_event_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (RuntimeError, ValueError, NotImplementedError):
                    pass
            return client

    class SuiteEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, log_output: bool = False,
                                     stdout_file: Any = None, stderr_file: Any = None, start_timeout: int = 60,
                                     execution_timeout: int | None = None, **kwargs: Any) -> Any:
            kwargs = remove_args(["input_path"], **kwargs)
            safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
            final_kwargs = merge_kwargs(
                safe_kwargs, timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                startup_timeout=start_timeout, kernel_name=kernel_name, log=logger, log_output=log_output,
                stdout_file=stdout_file, stderr_file=stderr_file)
            client = SuiteClient(nb_man, **final_kwargs)
            # papermill writes the whole notebook (validated) at every cell's start and end: with figures
            # and inline attention views that was most of a template's fixed cost. It is written once, when
            # the notebook completes or fails (papermill's notebook_complete, after this returns or raises).
            nb_man.save = lambda **_: None
            try:
                return client.execute()
            finally:
                del nb_man.save  # papermill's own save again, for the final write
                if not client.owns_km and client.kc is not None:
                    client.kc.stop_channels()

    papermill_engines.register("suite", SuiteEngine)
    _registered = True
