"""Training runs started from the dashboard: ``tunelab train`` in processes of their own.

Each run is a plain ``python -m tunelab.cli train CONFIG`` in a new session, so stopping the dashboard
(Ctrl-C, a restart) leaves it training; it records itself in the registry like any run from the command
line. Its config and its console output (stdout and stderr) are written to ``<runs>/.dashboard/`` first,
because ``tunelab train`` refuses a run folder that already holds files; once the run folder exists the
console log is linked into it as ``console.log``.

The launcher keeps every process it started: a thread waits on each one, so a finished run leaves no
zombie behind, and a run that fails at once can say why. At most ``MAX_RUNNING`` of its runs train at
the same time on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.registry.db import URL_VARIABLE

MAX_RUNNING = 2
LAUNCH_FOLDER = ".dashboard"
CONSOLE_LOG = "console.log"
FAILURE_LINES = 8  # the most lines of a failure message shown on the form


class LaunchRefused(TunelabError):
    """The run cannot start now: too many runs are training, or its name is taken."""


@dataclass
class Launch:
    """One ``tunelab train`` process started by the dashboard."""

    run_name: str
    run_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen
    started: float = field(default_factory=time.time)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return self.process.poll()

    def console(self, lines: int = 40) -> list[str]:
        """The last ``lines`` lines of its console output, progress bars reduced to their last state."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - 64_000))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        shown = [line.rsplit("\r", 1)[-1].rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        return [line for line in shown if line.strip()][-lines:]

    def failure(self) -> str | None:
        """Why the process stopped, when it stopped with an error: its ``error:`` message (the CLI prints a
        user's mistake that way, a config problem as a short list), else its last line."""
        if self.exit_code in (None, 0):
            return None
        lines = self.console(200)
        starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
        if starts:
            return "\n".join(lines[starts[-1]:starts[-1] + FAILURE_LINES]).removeprefix("error: ")
        return lines[-1] if lines else f"tunelab train exited with code {self.exit_code} and printed nothing"

    def link_console(self) -> None:
        """Put the console log into the run folder as console.log, once that folder exists (a hard link:
        the process keeps appending to the same file)."""
        target = self.run_dir / CONSOLE_LOG
        if not self.run_dir.is_dir() or target.exists():
            return
        try:
            os.link(self.log_path, target)
        except OSError:
            try:
                target.symlink_to(self.log_path)
            except OSError:
                pass  # the log stays in the launch folder, which the run page can still be pointed at


class Launcher:
    """The dashboard's training processes, by run name."""

    def __init__(self, runs_root: Path, registry_url: str | None = None, limit: int = MAX_RUNNING):
        self.runs_root = Path(runs_root).resolve()
        self.registry_url = registry_url
        self.limit = limit
        self.launches: dict[str, Launch] = {}
        self._lock = threading.Lock()

    @property
    def launch_folder(self) -> Path:
        return self.runs_root / LAUNCH_FOLDER

    def running(self) -> list[Launch]:
        return [launch for launch in self.launches.values() if launch.running]

    def get(self, run_name: str) -> Launch | None:
        return self.launches.get(run_name)

    def name_taken(self, run_name: str) -> bool:
        """A run folder of that name exists, or a run of that name is starting (its folder not made yet)."""
        launch = self.launches.get(run_name)
        return (self.runs_root / run_name).exists() or (launch is not None and launch.running)

    def start(self, run_name: str, config_text: str) -> Launch:
        """Write the config and start ``tunelab train`` on it; LaunchRefused when the limit is reached or the
        name is taken."""
        with self._lock:
            busy = self.running()
            if len(busy) >= self.limit:
                names = ", ".join(launch.run_name for launch in busy)
                raise LaunchRefused(f"{len(busy)} runs started from this dashboard are still training ({names}); "
                                    f"at most {self.limit} run at once on this machine, so wait for one to finish")
            if self.name_taken(run_name):
                raise LaunchRefused(f"a run named {run_name} already exists in {self.runs_root}; choose another name")
            launch = self._spawn(run_name, config_text)
            self.launches[run_name] = launch
        threading.Thread(target=self._wait, args=(launch,), name=f"tunelab-run-{run_name}", daemon=True).start()
        return launch

    def _spawn(self, run_name: str, config_text: str) -> Launch:
        self.launch_folder.mkdir(parents=True, exist_ok=True)
        config_path = self.launch_folder / f"{run_name}.yaml"
        log_path = self.launch_folder / f"{run_name}.{CONSOLE_LOG}"
        config_path.write_text(config_text, encoding="utf-8")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.registry_url:  # the dashboard's registry, in the environment rather than on the command line
            environment[URL_VARIABLE] = self.registry_url
        with log_path.open("wb") as log:
            process = subprocess.Popen(self.command(config_path), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=environment, start_new_session=True)
        return Launch(run_name, self.runs_root / run_name, config_path, log_path, process)

    def command(self, config_path: Path) -> list[str]:
        """The training command: this Python's ``tunelab train`` on the written config."""
        return [sys.executable, "-m", "tunelab.cli", "train", str(config_path)]

    @staticmethod
    def _wait(launch: Launch) -> None:
        """Reap the process when it ends (no zombie), linking its console log into its folder on the way."""
        while launch.running:
            launch.link_console()
            try:
                launch.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                continue
        launch.link_console()
