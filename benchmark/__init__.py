"""geofm-bench: benchmark Earth-observation foundation-model encoders with segmentation decoders."""

from pathlib import Path

# The Hydra config tree, as an absolute path: `python benchmark/run.py`, `python -m benchmark.sweep` and the
# console scripts (`geofm-bench`, `geofm-predict`, ...) all find it, whichever way the module was loaded.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def _register_resolvers() -> None:
    """``${frames:${dataset.multi_temporal}}``: PANGAEA's multi_temporal (false or a count) as a frame count."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("frames"):
        OmegaConf.register_new_resolver("frames", lambda value: 1 if value in (False, None) else int(value))


_register_resolvers()
