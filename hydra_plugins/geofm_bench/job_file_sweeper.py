"""The sweeper of ``python -m benchmark.sweep``: Hydra's basic sweeper, over the lines of a job file too, with
every job's config composed once.

- **Job files.** With ``hydra.sweeper.job_file`` (``python -m benchmark.sweep --jobs FILE``), each line of the
  file is a sweep of its own (its overrides after the command line's, comma lists allowed, ``#`` comments):
  the jobs of all lines are expanded and their configs composed before the first job starts, so that a
  mistake on the last line stops the sweep before any work.
- **Checked before the first job.** Every job's composed config also goes through ``check`` (a dotted
  path: the application's own start-up checks), and the sweep stops with every problem found before any
  job runs.
- **Composed once.** Hydra's basic sweeper composes every job's config to check it, and the basic launcher
  composes it again to run it; here the launcher gets the checked config. Other launchers (which run jobs in
  other processes) compose their own.

This module imports nothing but Hydra: Hydra imports every plugin when any Hydra app starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException, HydraException
from hydra.types import HydraContext, RunMode, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf


class SweepCheckError(CompactHydraException):
    """Jobs of the sweep failed their checks (Hydra prints it without a traceback)."""


def read_job_file(path: Path) -> list[list[str]]:
    """The sweeps of a job file: one line of overrides each (comma lists allowed); ``#`` starts a comment."""
    if not path.is_file():
        raise HydraException(f"--jobs {path}: no such file (one line of overrides per sweep)")
    lines = [line.split("#", 1)[0].split() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def check_line(line: Sequence[str], job_file: str) -> None:
    """Refuse Hydra's own options on a line: they apply to the whole sweep (its launcher, its sweeper)."""
    hydra_keys = [o for o in line if o.lstrip("+~").startswith("hydra")]
    if hydra_keys:
        raise HydraException(f"{job_file}: {' '.join(hydra_keys)}: Hydra's options apply to the whole sweep; "
                             "give them on the command line, not on a line of the job file")


class ComposedOnce:
    """A config loader that hands the launcher the configs the sweeper composed to check them."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.checked: dict[tuple[str, ...], DictConfig] = {}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = tuple(sweep_overrides)
        if key in self.checked:  # the launcher's call: the config the sweeper checked (then forgotten)
            return self.checked.pop(key)
        config = self.loader.load_sweep_config(master_config, sweep_overrides)
        self.checked[key] = config
        return config

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class JobFileSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 job_file: str | None = None, check: str | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.job_file = job_file
        self.check = check

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        if "BasicLauncher" in str(config.hydra.launcher.get("_target_", "")):  # it runs the jobs in this process
            self.hydra_context = HydraContext(config_loader=ComposedOnce(hydra_context.config_loader),  # type: ignore[arg-type]
                                              callbacks=hydra_context.callbacks)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """Every line's jobs (the command line's sweep when there is no job file), then Hydra's basic sweep."""
        assert self.hydra_context is not None and self.config is not None
        jobs = []
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for line in read_job_file(Path(self.job_file)) if self.job_file else [[]]:
            params = [f"{k}={v}" for k, v in self.line_params(line, arguments).items()]
            jobs += self.split_arguments(parser.parse_overrides([*params, *arguments, *line]), None)[0]
        size = self.max_batch_size or len(jobs)
        self.overrides = [jobs[start:start + size] for start in range(0, len(jobs), size)]
        return self.run_batches()

    def line_params(self, line: Sequence[str], arguments: list[str]) -> dict[str, str]:
        """``hydra.sweeper.params`` of a line's sweep: those of the experiment the line selects, composed with
        the line; else the command line's (only ``experiment`` configs set sweep lists, and a line cannot set
        ``hydra`` keys)."""
        if line:
            check_line(line, str(self.job_file))
        if not any(o.lstrip("+~").split("=", 1)[0] == "experiment" for o in line):
            return dict(self.params)
        assert self.hydra_context is not None and self.config is not None
        hydra_overrides = OmegaConf.to_container(self.config.hydra.overrides.hydra)
        line_config = self.hydra_context.config_loader.load_configuration(
            config_name=self.config.hydra.job.config_name, overrides=[*hydra_overrides, *arguments, *line],  # type: ignore[misc]
            run_mode=RunMode.MULTIRUN)
        return dict(line_config.hydra.sweeper.params or {})

    def check_jobs(self) -> None:
        """Compose every job of every batch (Hydra's check) and put it through ``self.check``; raise with every
        job's problems before any job runs."""
        assert self.hydra_context is not None and self.config is not None
        check = get_method(self.check) if self.check else None  # imported now, not at Hydra's plugin scan
        problems = []
        for batch in self.overrides:
            for overrides in batch:
                config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                problem = check(config) if check else None
                if problem:
                    problems.append(f"{' '.join(overrides)}:\n      {problem}")
        if problems:
            raise SweepCheckError(f"{len(problems)} job(s) of the sweep cannot run; nothing was started:\n  - "
                                 + "\n  - ".join(problems))

    def run_batches(self) -> list[Sequence[Any]]:
        """Hydra's basic sweep over ``self.overrides``, every batch checked (composed) before the first is
        launched (``max_batch_size`` only sizes the launches)."""
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.check_jobs()
        returns, first = [], 0
        for batch in self.overrides:
            results = self.launcher.launch(batch, initial_job_idx=first)
            for result in results:
                _ = result.return_value  # raises the job's error, as Hydra's basic sweeper does
            first += len(batch)
            returns.append(results)
        return returns
