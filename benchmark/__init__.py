"""geofm-bench: benchmark Earth-observation foundation-model encoders with segmentation decoders."""

from pathlib import Path

# The Hydra config tree, as an absolute path: `python benchmark/run.py`, `python -m benchmark.sweep` and the
# console scripts (`geofm-bench`, `geofm-predict`, ...) all find it, whichever way the module was loaded.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
