#!/usr/bin/env python
"""Grid sweeps on SLURM: ``python tools/sweep.py config=... --grid 'optimizer.params.lr=[1e-4,2e-4]' --root save/sweeps/lr``.

One save_dir per point under ``--root``, all points as one submitit job array; finished
points are skipped and unfinished ones resume; ``--summary`` prints the best metric per
point. See ``albef_plugin/launch/sweep.py`` and the README ("Run on a cluster").
"""
import os
import sys

# Allow running from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from albef_plugin.config import ConfigError  # noqa: E402
from albef_plugin.errors import UserError  # noqa: E402
from albef_plugin.launch.sweep import main  # noqa: E402

if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, UserError) as exc:  # LaunchError included
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
