"""One Jupyter kernel for every template of a task's run.

A template's own computation on a small model takes a second or two; starting a kernel, importing
torch, transformers and TransformerLens, and converting the model through the bridge took 15-25 s, once
per template. :class:`TemplateKernel` starts one kernel per task run and executes the templates in it one
after another with papermill. Before each template the kernel's namespace is emptied (IPython's
``%reset``) and its cell counter restarted, so a template sees nothing its predecessor defined and its
cells are numbered from 1, as in a fresh kernel; what stays is what is not the template's own: imported
modules and the converted model, which :func:`helpers.session.start_session` asks
:func:`helpers.model.load_model` to keep (``reuse=True``). Nothing an analysis computes depends on it: the
tests compare the figures of a run in one kernel with those of a kernel per template.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from helpers.paths import REPO_ROOT

_RESET = "get_ipython().run_line_magic('reset', '-f')\nget_ipython().execution_count = 1\nimport gc; gc.collect()"


KERNEL_NAME = "python3"
# Progress bars would be stored in the executed notebooks as stderr blocks, often frozen part-way: the
# kernel draws none, and the command line shows each template's progress and time instead.
_NO_PROGRESS_BARS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
# The figures' static PNGs are drawn by the runner, beside the kernel (helpers.viz.add_static_images).
_RUNNER_SETTINGS = {**_NO_PROGRESS_BARS, "SUITE_STATIC_IMAGES_BY_RUNNER": "1"}


def kernel_environment() -> dict[str, str]:
    """The kernel's environment: this process's, with this checkout's ``helpers`` importable, no progress
    bars, and the figures' PNGs left to the runner."""
    env = {**os.environ, **_RUNNER_SETTINGS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def kernelspec_metadata() -> dict[str, str]:
    """The notebook metadata JupyterLab writes for the kernel the templates run in (its display name is
    the installed kernel spec's, e.g. "Python 3 (ipykernel)"): stored as is, the notebook opens unmodified."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    return {"display_name": spec.display_name, "language": spec.language, "name": KERNEL_NAME}


def execute_template(template: Path, notebook: Path, parameters: dict[str, Any], *, km: Any = None) -> None:
    """Execute ``template`` into ``notebook`` with ``parameters`` injected, in the kernel managed by ``km``
    (a fresh kernel, started in the notebook's folder, when None).

    Raises:
        papermill.PapermillExecutionError: a cell raised.
        nbclient.exceptions.DeadKernelError: the kernel died.
    """
    import papermill as pm

    _register_engine()
    options: dict[str, Any] = {"km": km} if km is not None else {}
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", *_RUNNER_SETTINGS)}
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
    """A kernel kept for one run's templates (see the module docstring); a context manager."""

    def __init__(self, cwd: Path):
        from jupyter_client.manager import AsyncKernelManager
        from nbclient.util import run_sync

        self.km = AsyncKernelManager(kernel_name=KERNEL_NAME)
        # the kernel app logs errors only: its warning about TCP on localhost is not for a researcher
        run_sync(self.km.start_kernel)(cwd=str(cwd), env=kernel_environment(), extra_arguments=[
            "--IPKernelApp.log_level=ERROR",
            # no input history: a kernel that runs several notebooks would otherwise print "Session/line
            # number was not unique in database" into one of them, and nothing reads the history
            "--HistoryManager.enabled=False"])

    def run(self, template: Path, notebook: Path, parameters: dict[str, Any]) -> None:
        """Empty the namespace, then execute ``template`` (see :func:`execute_template`)."""
        self._reset()
        execute_template(template, notebook, parameters, km=self.km)

    def _reset(self) -> None:
        from nbclient.exceptions import DeadKernelError
        from nbclient.util import run_sync

        if not run_sync(self.km.is_alive)():
            raise DeadKernelError("the run's kernel is not running")
        client = self.km.client()
        client.start_channels()
        try:
            run_sync(client.wait_for_ready)(timeout=60)
            reply = run_sync(client.execute_interactive)(_RESET, silent=True, store_history=False, timeout=60)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"could not empty the kernel's namespace: {reply['content']}")
        finally:
            client.stop_channels()

    def close(self) -> None:
        from nbclient.util import run_sync

        try:
            if run_sync(self.km.is_alive)():
                run_sync(self.km.shutdown_kernel)(now=True)
        finally:
            run_sync(self.km.cleanup_resources)()

    def __enter__(self) -> TemplateKernel:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


_registered = False


def _register_engine() -> None:
    """papermill's nbclient engine, which also stops the kernel client it made for a kernel it does not own
    (papermill leaves that client's channels open)."""
    global _registered
    if _registered:
        return
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    class SuiteClient(PapermillNotebookClient):
        """nbclient turns Ctrl-C into a request to stop the kernel and goes on waiting for it; here Ctrl-C
        stays a KeyboardInterrupt, which stops the run (the runner then stops the kernel and says so)."""

        async def async_start_new_kernel_client(self) -> Any:
            import asyncio
            import signal

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
