"""Hydra entry point: ``python benchmark/run.py ...`` or ``torchrun --nproc_per_node=N benchmark/run.py ...``.

``--config-name=train`` (default) fine-tunes and tests; ``--config-name=test ckpt_dir=<run dir>``
evaluates a saved run.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from benchmark import pipeline


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if "ckpt_dir" in cfg:
        pipeline.test(cfg)
    else:
        pipeline.train(cfg)


if __name__ == "__main__":
    main()
