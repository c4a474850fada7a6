"""Fetch encoder release checkpoints to where the encoder configs expect them.

    python scripts/download_weights.py dofa prithvi            # by encoder config name
    python scripts/download_weights.py --url URL --output PATH # one file

For a NAME, ``configs/encoder/NAME.yaml`` gives ``download_url`` and the file name of
``encoder_weights``; the file goes to ``--dest`` (default ./pretrained_models, the configs' folder).
Hugging Face URLs go through ``huggingface_hub`` (its cache, resumable), others through plain HTTP with
resume. Files already present are left alone. Exits non-zero if any file could not be fetched.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from huggingface_hub import hf_hub_download
from omegaconf import OmegaConf

from benchmark.download import DownloadError, download_file, file_lock

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "encoder"
HF_HOSTS = ("huggingface.co", "hf.co")
GOOGLE_DRIVE_HOSTS = ("drive.google.com", "docs.google.com")


class FetchError(RuntimeError):
    """A file could not be fetched; the message says why and what to do."""


def config_entry(name: str, config_dir: Path) -> tuple[str, str]:
    """``(download_url, encoder_weights)`` of encoder config ``name``; interpolations are not resolved."""
    path = config_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in config_dir.glob("*.yaml")))
        raise FetchError(f"no encoder config {path}. Known encoders: {known}")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    url, weights = config.get("download_url"), config.get("encoder_weights")
    if not url or not weights:
        raise FetchError(
            f"{path} has no download_url or no encoder_weights: this encoder has no release file to fetch"
        )
    return str(url), str(weights)


def hf_location(url: str) -> dict[str, str | None] | None:
    """``hf_hub_download`` arguments for a Hugging Face file URL, or None for a URL elsewhere.

    The form is ``https://huggingface.co/[datasets/]<owner>/<repo>/resolve/<revision>/<file>``.
    """
    parts = urlparse(url)
    if parts.netloc not in HF_HOSTS:
        return None
    segments = [unquote(s) for s in parts.path.strip("/").split("/")]
    repo_type = None
    if segments and segments[0] in ("datasets", "spaces"):
        repo_type, segments = segments[0][:-1], segments[1:]
    if len(segments) < 5 or segments[2] != "resolve":
        raise FetchError(
            f"{url} is not a Hugging Face file URL (https://huggingface.co/<owner>/<repo>/resolve/"
            "<revision>/<file>); fix download_url in the encoder config"
        )
    return {
        "repo_id": "/".join(segments[:2]),
        "revision": segments[3],
        "filename": "/".join(segments[4:]),
        "repo_type": repo_type,
    }


def fetch(url: str, output: Path) -> Path:
    """Download ``url`` to ``output`` unless it is already there; raises :class:`FetchError`."""
    if output.is_file():
        print(f"{output} already exists; not downloaded again")
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    host = urlparse(url).netloc
    if host in GOOGLE_DRIVE_HOSTS:
        # Drive answers large files with a virus-scan confirmation page, not the file: no plain download.
        raise FetchError(
            f"{url} is hosted on Google Drive, which cannot be fetched automatically. Open it in a "
            f"browser and save the file as {output} (or `pip install gdown` and run "
            f"`gdown --fuzzy '{url}' -O {output}`)."
        )
    location = hf_location(url)
    if location is None:
        try:
            return download_file(url, output)
        except DownloadError as error:
            raise FetchError(f"{error}. Check the URL and your connection; rerun to resume.") from error
    # One process copies a given output (download_file above locks the same way).
    with file_lock(output):
        if output.is_file():
            return output
        try:
            cached = hf_hub_download(**location)
        except Exception as error:  # hub, HTTP and file-system errors all mean "not fetched": report them
            raise FetchError(
                f"Hugging Face download of {location['filename']} from {location['repo_id']} failed: {error}"
            ) from error
        # Copy out of the hub cache (its files are links into a blob store) and appear only when complete.
        partial = output.with_name(output.name + ".part")
        shutil.copyfile(cached, partial)
        os.replace(partial, output)
    return output


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="encoder config names (configs/encoder/NAME.yaml)")
    parser.add_argument("--url", help="download this URL instead of a config's")
    parser.add_argument("--output", type=Path, help="file to write with --url (default: DEST/<URL file name>)")
    parser.add_argument("--dest", type=Path, default=Path("pretrained_models"), help="folder for NAME downloads")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="folder of encoder configs")
    args = parser.parse_args(argv)
    if bool(args.names) == bool(args.url):
        parser.error("give encoder config names, or --url (with --output), not both")
    if args.output and not args.url:
        parser.error("--output goes with --url")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # e.g. "waiting for ... another process"
    failed = []
    for label in args.names or [args.url]:
        try:
            if args.url:
                url = args.url
                output = args.output or args.dest / Path(urlparse(url).path).name
            else:
                url, weights = config_entry(label, args.config_dir)
                output = args.dest / Path(weights).name
            path = fetch(url, output)
        except FetchError as error:
            print(f"{label}: {error}", file=sys.stderr)
            failed.append(label)
            continue
        print(f"{label}: {url} -> {path}")
    if failed:
        print(f"Not fetched: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
