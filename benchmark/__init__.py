"""geofm-bench: benchmark Earth-observation foundation-model encoders with segmentation decoders."""

from pathlib import Path

# The Hydra config tree, as an absolute path: `python benchmark/run.py`, `python -m benchmark.sweep` and the
# console scripts (`geofm-bench`, `geofm-predict`, ...) all find it, whichever way the module was loaded.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def _frames(value: object) -> int:
    from benchmark.compat import frame_count  # imported when a config resolves it, not with the package

    return frame_count(value)


def _register_resolvers() -> None:
    """``${frames:${dataset.multi_temporal}}``: PANGAEA's multi_temporal (false or a count) as a frame count."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("frames"):
        OmegaConf.register_new_resolver("frames", _frames)


_register_resolvers()
