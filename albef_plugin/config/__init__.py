"""Configuration: typed schema, defaults and the loader behind ``config=`` + overrides."""
from albef_plugin.config.loader import ConfigError, build_config, default_component_config
from albef_plugin.config.schema import RootConfig

__all__ = ["ConfigError", "RootConfig", "build_config", "default_component_config"]
