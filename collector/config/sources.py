"""The registry of source config types: `type:` in YAML -> the model that validates it."""

from __future__ import annotations

from collector.config.model import SourceConfig

_TYPES: dict[str, type[SourceConfig]] = {}


def register_source_config(model: type[SourceConfig]) -> type[SourceConfig]:
    """Make `type: <model.TYPE>` valid in `sources:`. Usable as a class decorator."""
    if not model.TYPE:
        raise ValueError(f"{model.__name__} has no TYPE")
    _TYPES[model.TYPE] = model
    return model


def source_config_types() -> dict[str, type[SourceConfig]]:
    return dict(_TYPES)
