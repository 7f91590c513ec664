"""A trainer that fails on the node, for the launcher's failure report (loaded through env.user_dir)."""
from dataclasses import dataclass

from albef_plugin.registry import registry


@registry.register_model("launch_fail_model", override=True)
class LaunchFailModel:
    @dataclass
    class Config:
        size: int = 1


@registry.register_builder("launch_fail_data", override=True)
class LaunchFailData:
    @dataclass
    class Config:
        n: int = 1


@registry.register_trainer("launch_fail_trainer", override=True)
class LaunchFailTrainer:
    def __init__(self, config):
        self.config = config

    def load(self):
        pass

    def run(self):
        raise RuntimeError("the toy trainer broke on purpose")
