"""Managed servers (a model config's `launch:`) for the session: started once, by the
controller, for the models this run sends to; named as the cause when one died."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pytest_servebench.launch.launcher import Launcher
from pytest_servebench.scoring.aggregate import TaskResult
from pytest_servebench.session.tasks import Run


def start_servers(launcher: Launcher, run: Run, echo: Callable[[str], None]) -> dict[str, str]:
    """Start the servers of the models that still have a case to send; returns model name ->
    URL for the workers (raises ServebenchError when one does not come up)."""
    launching = [m for m in run.models if m.launch]
    needed = [m for m in launching if run.sends_to(m)]
    for model in launching:
        if model not in needed:  # a resumed run whose answers are all saved
            echo(
                f"[servebench] {model.name}: every case has a saved answer in "
                f"{run.work.root}; its server is not started"
            )
    if not needed:
        return {}
    launcher.install_signal_handlers()
    return launcher.start_models(needed)


def crash_reason(
    launcher: Launcher, launched: Iterable[str], results: Iterable[TaskResult]
) -> str | None:
    """What happened to a managed server that died during the run (with its log's last
    lines), or None: the engine only sees that nothing answers any more."""
    results = list(results)
    for name in launched:
        answered = sum(
            counts["passed"] + counts["failed"]
            for counts in (r.counts() for r in results if r.model_name == name)
        )
        crash = launcher.crash_report(name, answered)
        if crash:
            return crash
    return None
