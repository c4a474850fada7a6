"""Hydra entry point: ``python benchmark/run.py ...`` or ``torchrun --nproc_per_node=N benchmark/run.py ...``.

The config's ``command`` key names the job's function, and each command has its config: ``train``
(default) fine-tunes and tests; ``test ckpt_dir=<run dir>`` evaluates a saved run; ``predict`` and ``embed`` map scenes with a
saved run (``benchmark/predict``).
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_method
from omegaconf import DictConfig

from benchmark import CONFIG_DIR


def dispatch(cfg: DictConfig) -> None:
    """Call the job the config names in ``command`` (a function taking the config)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and "optuna" in str(hydra_cfg.sweeper.get("_target_", "")).lower():
        raise ValueError(
            "run.py -m runs the jobs of a sweep in this process and returns no score for Optuna: tune with "
            "python -m benchmark.sweep hydra/sweeper=tune ... (each trial in fresh processes, scored on validation)"
        )
    get_method(cfg.command)(cfg)


main = hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")(dispatch)
predict_main = hydra.main(config_path=CONFIG_DIR, config_name="predict", version_base="1.3")(dispatch)
embed_main = hydra.main(config_path=CONFIG_DIR, config_name="embed", version_base="1.3")(dispatch)


if __name__ == "__main__":
    main()
