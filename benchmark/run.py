"""Hydra entry point: ``python benchmark/run.py ...`` or ``torchrun --nproc_per_node=N benchmark/run.py ...``.

The config's ``command`` key chooses the job; each command has its config: ``train`` (default) fine-tunes
and tests; ``test ckpt_dir=<run dir>`` evaluates a saved run; ``predict`` and ``embed`` map scenes with a
saved run (``benchmark/predict``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from benchmark import CONFIG_DIR, pipeline
from benchmark.predict import app

COMMANDS = {"train": pipeline.train, "test": pipeline.test, "predict": app.predict, "embed": app.embed}


def dispatch(cfg: DictConfig) -> None:
    if cfg.command not in COMMANDS:
        raise ValueError(f"command={cfg.command} is not one of {', '.join(COMMANDS)}: use --config-name=<command>")
    COMMANDS[cfg.command](cfg)


main = hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")(dispatch)
predict_main = hydra.main(config_path=CONFIG_DIR, config_name="predict", version_base="1.3")(dispatch)
embed_main = hydra.main(config_path=CONFIG_DIR, config_name="embed", version_base="1.3")(dispatch)


if __name__ == "__main__":
    main()
