"""A plugin module loaded through env.user_dir by the launcher tests (also in subprocesses)."""
import json
from dataclasses import dataclass
from pathlib import Path

from albef_plugin.registry import registry


@registry.register_model("launch_toy_model", override=True)
class LaunchToyModel:
    @dataclass
    class Config:
        size: int = 1


@registry.register_builder("launch_toy_data", override=True)
class LaunchToyData:
    @dataclass
    class Config:
        n: int = 1


@registry.register_trainer("launch_toy_trainer", override=True)
class LaunchToyTrainer:
    """Records that it ran, with what config, in <save_dir>/ran.json."""

    def __init__(self, config):
        self.config = config

    def load(self):
        pass

    def run(self):
        out = Path(self.config.env.save_dir) / "ran.json"
        out.write_text(json.dumps({"resume": bool(self.config.checkpoint.resume),
                                   "size": self.config.model_config.launch_toy_model.size}))
        return "finished"
