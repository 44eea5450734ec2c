from albef.config.defaults import get_default_config_dict
from albef.config.loader import ConfigError, config_to_dict, dump_config, load_config, parse_overrides

__all__ = ["ConfigError", "config_to_dict", "dump_config", "get_default_config_dict", "load_config", "parse_overrides"]
