#!/usr/bin/env python
"""Run any task: ``python tools/run.py config=projects/albef/configs/<task>.yaml [key=value ...]``.

Same as the ``albef-run`` console script. Multi-GPU: ``torchrun --nproc_per_node=N tools/run.py ...``;
SLURM: add ``launcher.type=submitit launcher.nodes=... launcher.gpus_per_node=...``.
"""
import os
import sys

# Allow running from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from albef_plugin.run import main  # noqa: E402

if __name__ == "__main__":
    main()
