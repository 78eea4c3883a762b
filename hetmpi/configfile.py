"""Config files: ``load_config`` reads and checks a YAML config file, ``config_to_dict``
gives a Config back as plain YAML-safe data in the same layout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hetmpi import _validate as v
from hetmpi import yamlfile
from hetmpi.config import Config, ConfigError, config_from_dict


def load_config(path: str | Path) -> Config:
    """Read and check a YAML config file; relative paths inside are relative to its folder.

    Raises ConfigError for a missing or unreadable file, invalid YAML, a document that is not
    a mapping, and every problem config_from_dict finds.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; check the path") from None
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read the config file ({reason}); check it") from None
    try:
        raw = yamlfile.load_yaml(text)
    except yamlfile.DuplicateKeyError as exc:
        raise ConfigError(exc.text(f" in {path}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: not valid YAML, {yamlfile.yaml_error_text(exc)}; fix the syntax"
        ) from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; give at least data.path")
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: must be a YAML mapping of sections (data, model, ...), got {v.show(raw)}; "
            "see docs/configuration.md"
        )
    return config_from_dict(raw, path.absolute().parent)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """``cfg`` as plain YAML-safe data, in the YAML layout config_from_dict reads."""
    out = yamlfile.plain_data(cfg)
    out["model"]["parameters"] = {
        p.name: {
            "value": p.value,
            "fixed": p.fixed,
            "bounds": list(p.bounds),
            "prior": {"mean": p.prior_mean, "sd": p.prior_sd, "log_space": p.log_space},
        }
        for p in cfg.model.parameters
    }
    if cfg.model.noise.sigma is None:
        out["model"]["noise"]["sigma"] = "auto"
    if cfg.sharding.num_shards is None:
        out["sharding"]["num_shards"] = "auto"
    if cfg.scheduler is None:
        del out["scheduler"]
    return out
