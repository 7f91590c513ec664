"""Write a synthetic world from the command line.

    python -m albef_plugin.datasets.synthetic --out data/synthetic/demo --num-train 3000 --tasks
    python -m albef_plugin.datasets.synthetic --out data/synthetic/demo --shards 250   # + tar shards
"""
from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from albef_plugin.datasets.synthetic.generate import WorldSpec, generate_world, load_scenes
from albef_plugin.datasets.synthetic.shards import shard_pattern, write_world_shards
from albef_plugin.datasets.synthetic.tasks import emit_all


def main(argv: Optional[List[str]] = None) -> int:
    defaults = WorldSpec()
    parser = argparse.ArgumentParser(prog="python -m albef_plugin.datasets.synthetic",
                                     description="Generate the synthetic shapes world (JPEG images + "
                                                 "ALBEF-format pretrain / re_train / re_eval JSON).")
    parser.add_argument("--out", required=True, help="world folder to create (reused if it already "
                                                     "holds the same world)")
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--num-test", type=int, default=defaults.num_test)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help="side of the rendered images in pixels")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument("--min-objects", type=int, default=defaults.min_objects)
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--tasks", action="store_true",
                        help="also write VQA / NLVR2 / SNLI-VE / grounding files under OUT/tasks")
    parser.add_argument("--shards", type=int, default=0, metavar="N",
                        help="also write the training images as webdataset tar shards of N images "
                             "under OUT/shards-N (img2dataset layout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        spec = WorldSpec(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                         seed=args.seed, image_size=args.image_size, jpeg_quality=args.jpeg_quality,
                         min_objects=args.min_objects, max_objects=args.max_objects)
        folder = generate_world(args.out, spec, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    if args.tasks:
        for path in emit_all(load_scenes(folder), folder):
            logging.info("wrote %s", path)
    if args.shards > 0:
        shards = write_world_shards(folder, args.shards)
        logging.info("shards ready: %s", shard_pattern(shards[0].parent, len(shards)))
    logging.info("world ready: %s", folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
