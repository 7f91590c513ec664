#!/usr/bin/env python
"""Convert an official ALBEF checkpoint (or one of ours) into this project's format.

    python tools/convert_checkpoint.py ALBEF_4M.pth weights/albef_4m
    python tools/convert_checkpoint.py mscoco.pth weights/albef_coco_256 --set image_encoder.image_size=256

Sizes are read off the tensors (head counts assume 64 features per head: use ``--set`` for
other models); ``--set`` overrides win (e.g. another image size: position embeddings are
resampled).

writes ``DST/model.safetensors`` (tied tensors stored once) and ``DST/config.yaml`` (the
model name, the model config that rebuilds it -- sizes, image size and grid read from the
checkpoint -- and ``pretrained_cfg`` with the text form). Load the result with
``albef_plugin.models.load_checkpoint(model, DST)`` or
``albef_plugin.load_model_and_preprocess("albef_pretrain", checkpoint=DST)``.

The source is read with ``torch.load(weights_only=True)``; a file that needs arbitrary
unpickling is refused unless ``--allow-unsafe-pickle`` is given (trusted files only).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from albef_plugin.errors import USER_ERROR_EXIT_CODE, UserError  # noqa: E402

logger = logging.getLogger("convert_checkpoint")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="official .pth, our .ckpt / .safetensors / folder")
    parser.add_argument("dst", help="output folder (created; an existing one needs --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace model.safetensors / config.yaml in an existing DST folder")
    parser.add_argument("--model", default="albef_pretrain", help="registered model name")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="model-config override (repeatable), e.g. image_encoder.num_heads=12")
    parser.add_argument("--non-strict", action="store_true",
                        help="convert even if some keys are neither loaded nor explained")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="trusted files only: allow torch.load(weights_only=False)")
    return parser.parse_args(argv)


def refuse_existing_destination(dst: Path, overwrite: bool) -> None:
    """An existing, non-empty DST is only written with --overwrite."""
    if overwrite or not dst.exists():
        return
    if dst.is_dir() and not any(dst.iterdir()):
        return
    kind = "folder holding " + ", ".join(sorted(p.name for p in dst.iterdir())[:5]) \
        if dst.is_dir() else "file"
    raise UserError(f"{dst} already exists (a {kind}): choose another output folder, or pass "
                    f"--overwrite to replace its model.safetensors and config.yaml.")


def main(argv: Optional[List[str]] = None) -> Path:
    """Convert; a user error (existing DST, unreadable or unsafe source) ends in one
    ``error:`` line and exit code 2."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from albef_plugin.models.checkpoints import CheckpointError

    try:
        refuse_existing_destination(Path(args.dst), args.overwrite)
        return convert(args)
    except (UserError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


def convert(args: argparse.Namespace) -> Path:
    from omegaconf import OmegaConf

    from albef_plugin.inference import overrides_for_checkpoint, save_converted
    from albef_plugin.models import build_model, load_checkpoint
    from albef_plugin.models.checkpoints import read_checkpoint

    contents = read_checkpoint(args.src, args.allow_unsafe_pickle)
    cli = OmegaConf.to_container(OmegaConf.from_dotlist(args.overrides)) if args.overrides else {}
    model = build_model(args.model, overrides_for_checkpoint(contents, cli))
    result = load_checkpoint(model, contents, strict=not args.non_strict)
    logger.info("loaded %s (%s): %d resampled, %d tolerated, %d missing, %d unexpected",
                args.src, result.format, len(result.resampled), len(result.tolerated),
                len(result.missing), len(result.unexpected))
    return save_converted(model, args.model, args.dst)


if __name__ == "__main__":
    main()
