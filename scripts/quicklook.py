"""PNG quick-look of a predicted scene: the input as an RGB composite, and the class map over it.

    python scripts/quicklook.py --image scene.tif --rgb 4 3 2 --classes out/scene_classes.tif \\
        --out docs/predict_quicklook.png [--title "..."]

``--rgb`` takes the input's 1-based band indices for red, green and blue; each is stretched between its
2nd and 98th percentiles over valid pixels (not the file's nodata value, -9999, NaN or infinity, which
show black). The class map (``predict``'s ``<scene>_classes.tif``) is drawn with its colour table at
``--opacity``, its nodata (255) transparent; the legend takes the class names from its ``class_names``
tag and gives each class's share of the mapped pixels. Rasters larger than ``--max-side`` are read
decimated (through their overviews where they have them).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402

CLASS_NODATA = 255
NODATA_MARK = -9999.0


def read_shape(path: Path, max_side: int) -> tuple[int, int]:
    """The (height, width) to read ``path`` at: its own, or scaled down so the longer side is ``max_side``."""
    with rasterio.open(path) as src:
        height, width = src.height, src.width
    factor = max(1.0, max(height, width) / max_side)
    return max(1, round(height / factor)), max(1, round(width / factor))


def read_rgb(path: Path, bands: Sequence[int], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb (H, W, 3) in 0..1, valid (H, W) bool)``: ``bands`` of ``path``, percentile-stretched."""
    with rasterio.open(path) as src:
        values = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest).astype(np.float64)
        nodata = src.nodata
    invalid = ~np.isfinite(values) | (values == NODATA_MARK)
    if nodata is not None and np.isfinite(nodata):
        invalid |= values == nodata
    valid = ~invalid.any(axis=0)
    rgb = np.zeros((*shape, 3))
    for index, band in enumerate(values):
        low, high = np.percentile(band[valid], (2, 98)) if valid.any() else (0.0, 1.0)
        rgb[..., index] = np.clip((band - low) / max(high - low, 1e-12), 0, 1)
    rgb[~valid] = 0
    return rgb, valid


def read_classes(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, dict[int, str], dict[int, tuple], dict[str, str]]:
    """``(classes (H, W) uint8, {class: name}, {class: RGBA 0..255}, tags)`` of a ``predict`` class map."""
    with rasterio.open(path) as src:
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        tags = src.tags()
        try:
            colours = src.colormap(1)
        except ValueError:  # no colour table: fall back to matplotlib's
            colours = {}
    names = {int(k): str(v) for k, v in json.loads(tags.get("class_names", "{}")).items()}
    for k in sorted(set(np.unique(classes).tolist()) - {CLASS_NODATA} - set(names)):
        names[k] = f"class {k}"
    palette = plt.get_cmap("tab10")
    for k in names:
        if k not in colours:
            colours[k] = tuple(int(255 * c) for c in palette(k % 10))
    return classes, names, colours, tags


def overlay(classes: np.ndarray, colours: dict[int, tuple], opacity: float) -> np.ndarray:
    """(H, W, 4) RGBA in 0..1 of ``classes`` with their colours at ``opacity``; nodata transparent."""
    lookup = np.zeros((256, 4))
    for k, rgba in colours.items():
        lookup[k, :3] = np.asarray(rgba[:3]) / 255
        lookup[k, 3] = opacity * (rgba[3] / 255 if len(rgba) > 3 else 1.0)
    lookup[CLASS_NODATA, 3] = 0.0
    return lookup[classes]


def legend_handles(classes: np.ndarray, names: dict[int, str], colours: dict[int, tuple]) -> list[Patch]:
    """One legend entry per class: its colour, its name and its share of the mapped (not nodata) pixels."""
    mapped = max(int((classes != CLASS_NODATA).sum()), 1)
    handles = []
    for k, name in sorted(names.items()):
        share = 100 * int((classes == k).sum()) / mapped
        handles.append(Patch(facecolor=np.asarray(colours[k][:3]) / 255, edgecolor="black", label=f"{name} ({share:.1f}%)"))
    return handles


def default_title(image: Path, tags: dict[str, str]) -> str:
    run = Path(tags["run"]).name if tags.get("run") else "unknown run"
    return f"{image.name}\nmapped by run {run}"


def render(args: argparse.Namespace) -> Path:
    """Draw the quick-look of ``args.image`` and ``args.classes`` into ``args.out``."""
    shape = read_shape(args.image, args.max_side)
    if read_shape(args.classes, args.max_side) != shape:
        raise SystemExit(f"{args.classes} and {args.image} are not the same size: is it the class map of this image?")
    rgb, _ = read_rgb(args.image, args.rgb, shape)
    classes, names, colours, tags = read_classes(args.classes, shape)
    figure, axes = plt.subplots(1, 2, figsize=(10, 5.4), constrained_layout=True)
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title(f"input, bands {'/'.join(map(str, args.rgb))} as RGB", fontsize=10)
    axes[1].imshow(rgb, interpolation="nearest")
    axes[1].imshow(overlay(classes, colours, args.opacity), interpolation="nearest")
    axes[1].set_title("predicted classes", fontsize=10)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.legend(handles=legend_handles(classes, names, colours), loc="lower center", ncol=min(len(names), 4),
                  frameon=False, fontsize=9, bbox_to_anchor=(0.5, -0.08))
    figure.suptitle(args.title or default_title(args.image, tags), fontsize=11)
    save_png(figure, args.out, args.dpi)
    return args.out


def save_png(figure: plt.Figure, out: Path, dpi: int) -> None:
    """Save ``figure`` as a 256-colour palette PNG (a third of the size of a full-colour one, or less)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    buffer.seek(0)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(out, optimize=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, required=True, help="the input GeoTIFF that was mapped")
    parser.add_argument("--rgb", type=int, nargs=3, required=True, metavar=("R", "G", "B"), help="1-based band indices")
    parser.add_argument("--classes", type=Path, required=True, help="predict's <scene>_classes.tif")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", help="figure title (default: the input's name and the run's folder)")
    parser.add_argument("--opacity", type=float, default=0.5, help="opacity of the class colours (0..1)")
    parser.add_argument("--max-side", type=int, default=1024, help="longest side read, in pixels")
    parser.add_argument("--dpi", type=int, default=100, help="PNG resolution")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    out = render(args)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return out


if __name__ == "__main__":
    main()
