"""Parameters and forward FLOPs of an encoder with each of several decoders, as a markdown table.

    python scripts/model_cost.py --encoder ssl4eo_mae_optical \
        --decoders seg_linear seg_fcn seg_upernet seg_segformer seg_muster --input-size 224

The config is composed from configs/train.yaml exactly as run.py composes it, so ``--override`` takes the
same ``key=value`` arguments (``dataset=...``, ``mode=unfrozen``, ``decoder.channels=256``, ...) and the
trainable-parameter count follows ``mode``. Models get random weights: no checkpoint is read. FLOPs are
counted by torch.utils.flop_counter (2 per multiply-add) for one forward pass of one image.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from benchmark.models.encoders.base import architecture_config
from benchmark.models.segmentor import Segmentor, resolve_mode

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
COLUMNS = {
    "decoder": "decoder",
    "encoder_params": "encoder params (M)",
    "decoder_params": "decoder params (M)",
    "trainable_params": "trainable params (M)",
    "total_params": "total params (M)",
    "encoder_gflops": "encoder GFLOPs",
    "decoder_gflops": "decoder GFLOPs",
    "total_gflops": "total GFLOPs",
}


def forward_flops(fn, *args) -> tuple[object, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return out, counter.get_total_flops()


def model_cost(
    encoder: str,
    decoders: Sequence[str],
    input_size: int,
    num_classes: int = 2,
    overrides: Sequence[str] = (),
) -> list[dict]:
    """One row per decoder: parameter counts and forward FLOPs for one ``input_size`` x ``input_size`` image."""
    common = [f"encoder={encoder}", f"encoder.input_size={input_size}", f"dataset.num_classes={num_classes}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfgs = [compose("train", overrides=[*common, f"decoder={name}", *overrides]) for name in decoders]
    mode = resolve_mode(cfgs[0].mode, cfgs[0].finetune)
    enc = instantiate(architecture_config(cfgs[0].encoder), _convert_="all").eval()  # random weights, no file
    # multi-temporal encoders (Prithvi) take their configured number of frames
    frames = getattr(enc, "num_frames", 1)
    image = {m: torch.randn(1, len(bands), frames, input_size, input_size) for m, bands in enc.input_bands.items()}
    features, encoder_flops = forward_flops(enc, image)
    rows = []
    for name, cfg in zip(decoders, cfgs):
        decoder = instantiate(cfg.decoder, in_dims=enc.output_dims, _convert_="all")
        model = Segmentor(enc, decoder, mode).eval()
        _, decoder_flops = forward_flops(model.decoder, features, (input_size, input_size))
        params = model.parameter_counts()
        rows.append(
            {
                "decoder": name,
                "mode": mode,
                "encoder_params": params["encoder_params"],
                "decoder_params": params["total_params"] - params["encoder_params"],
                "trainable_params": params["trainable_params"],
                "total_params": params["total_params"],
                "encoder_gflops": encoder_flops / 1e9,
                "decoder_gflops": decoder_flops / 1e9,
                "total_gflops": (encoder_flops + decoder_flops) / 1e9,
            }
        )
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    def cell(key: str, value: object) -> str:
        if key.endswith("_params"):
            value = value / 1e6
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(key, row[key]) for key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", required=True, help="a config name in configs/encoder/")
    parser.add_argument("--decoders", nargs="+", required=True, help="config names in configs/decoder/")
    parser.add_argument("--input-size", type=int, default=224, help="input window side in pixels")
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument(
        "--override", nargs="*", default=[], metavar="KEY=VALUE",
        help="run.py overrides, e.g. dataset=synthetic_burnscars mode=unfrozen encoder.depth=4",
    )
    args = parser.parse_args(argv)
    rows = model_cost(args.encoder, args.decoders, args.input_size, args.num_classes, args.override)
    print(
        f"encoder {args.encoder}, input {args.input_size}x{args.input_size}, {args.num_classes} classes, "
        f"mode {rows[0]['mode']}; FLOPs of one forward pass of one image\n"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
