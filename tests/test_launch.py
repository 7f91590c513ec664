"""Launchers: the local launcher and submitit (debug and local clusters) reach run_job."""
import json
from pathlib import Path

import pytest

from albef_plugin.config import build_config
from albef_plugin.registry import registry


PLUGIN = str(Path(__file__).parent / "plugins" / "launch_toy_plugin.py")


def _config(tmp_path, *extra):
    # The plugin is imported through env.user_dir, as a user's own components would be;
    # submitit's subprocesses import it again from the config.
    return build_config([f"env.user_dir={PLUGIN}", "model=launch_toy_model", "datasets=launch_toy_data",
                         "training.trainer=launch_toy_trainer", f"env.save_dir={tmp_path}",
                         "model_config.launch_toy_model.size=3", *extra])


def test_local_launcher_runs_job_and_writes_config(tmp_path):
    cfg = _config(tmp_path)
    result = registry.get_launcher_class("local")(cfg).launch()
    assert result == "finished"
    assert json.loads((tmp_path / "ran.json").read_text())["size"] == 3
    assert (tmp_path / "config.yaml").is_file()


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_submitit_launcher(tmp_path, cluster):
    import albef_plugin.launch  # noqa: F401  registers the launchers

    cfg = _config(tmp_path, "launcher.type=submitit", f"launcher.cluster={cluster}",
                  "launcher.wait=true", "launcher.timeout_min=5")
    result = registry.get_launcher_class("submitit")(cfg).launch()
    assert result == "finished"
    assert json.loads((tmp_path / "ran.json").read_text())["size"] == 3
    assert (tmp_path / "submitit").is_dir()


def test_requeue_resumes_from_current_checkpoint(tmp_path):
    from albef_plugin.launch.submitit_launcher import SubmititJob
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(_config(tmp_path), resolve=True)
    delayed = SubmititJob(cfg).checkpoint()
    requeued_job = delayed.function
    assert requeued_job.config["checkpoint"]["resume"] is True
    assert cfg["checkpoint"]["resume"] is False  # the original is untouched
