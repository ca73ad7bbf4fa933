"""YAML file + `${VAR}` interpolation + environment overrides -> a validated `Config`.

Every problem becomes a `ConfigIssue` with its path and, where it came from the file, its
line; all of them are raised together in one `ConfigError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from collector.config.model import Config, Loc, SourceConfig
from collector.config.sources import source_config_types

ENV_PREFIX = "DT_COLLECTOR__"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_loc(loc: Loc) -> str:
    """("metrics", "custom:x", "unit") -> metrics."custom:x".unit; ints become [i]."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _IDENT.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
            text += ("." if text else "") + name
    return text


@dataclass(frozen=True)
class ConfigIssue:
    loc: Loc
    message: str
    where: str = ""  # "config.yaml:12" or "env DT_COLLECTOR__BUFFER__MAX_AGE"

    def __str__(self) -> str:
        parts = [p for p in (self.where, format_loc(self.loc) if self.loc else "") if p]
        return ": ".join([*parts, self.message])


class ConfigError(Exception):
    """All problems of one config, each with its path."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class _Origins:
    """Where each path of the raw config came from: a line in the file, or an env var."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.env: dict[Loc, str] = {}

    def where(self, loc: Loc) -> str:
        for n in range(len(loc), -1, -1):
            prefix = loc[:n]
            if prefix in self.env:
                return f"env {self.env[prefix]}"
            if prefix in self.lines:
                return f"{self.file}:{self.lines[prefix]}"
        return self.file


def _construct(loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, origins: _Origins) -> Any:
    origins.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                raise ConfigError([ConfigIssue(loc, "mapping keys must be plain values",
                                               f"{origins.file}:{key_node.start_mark.line + 1}")])
            key = str(key) if not isinstance(key, str) else key
            if key in result:
                raise ConfigError([ConfigIssue((*loc, key), "key appears twice",
                                               f"{origins.file}:{key_node.start_mark.line + 1}")])
            result[key] = _construct(loader, value_node, (*loc, key), origins)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, (*loc, i), origins) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _interpolate(value: Any, loc: Loc, env: Mapping[str, str], issues: list[ConfigIssue],
                 origins: _Origins) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), env, issues, origins) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), env, issues, origins) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        issues.append(ConfigIssue(loc, f"environment variable {name} is not set "
                                       f"(use ${{{name}:-default}} for a default)",
                                  origins.where(loc)))
        return ""

    return _VAR.sub(replace, value)


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str], origins: _Origins,
                         issues: list[ConfigIssue]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            issues.append(ConfigIssue((), f"environment variable {name} has an empty key"))
            continue
        try:
            value = yaml.safe_load(env[name]) if env[name] else ""
        except yaml.YAMLError:
            value = env[name]
        node: Any = raw
        loc: Loc = ()
        for i, part in enumerate(parts):
            key: str | int = int(part) if isinstance(node, list) and part.isdigit() else part
            loc = (*loc, key)
            last = i == len(parts) - 1
            if isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                if last:
                    node[key] = value
                else:
                    node = node[key]
            else:
                issues.append(ConfigIssue(loc, f"environment variable {name} does not name a "
                                               "key that can be set", f"env {name}"))
                break
        else:
            origins.env[loc] = name


def _pydantic_issues(exc: ValidationError, prefix: Loc, origins: _Origins) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False, include_input=False):
        # pydantic marks a bad dict key with a trailing "[key]"; the key itself is the path.
        loc: Loc = prefix + tuple(p for p in err["loc"] if p != "[key]")
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        elif message.startswith("Assertion failed, "):
            message = message[len("Assertion failed, "):]
        issues.append(ConfigIssue(loc, message, origins.where(loc)))
    return issues


def _validate_sources(raw_sources: Any, origins: _Origins,
                      issues: list[ConfigIssue]) -> list[SourceConfig]:
    if raw_sources is None:
        return []
    if not isinstance(raw_sources, list):
        issues.append(ConfigIssue(("sources",), "must be a list", origins.where(("sources",))))
        return []
    types = source_config_types()
    result: list[SourceConfig] = []
    for i, raw in enumerate(raw_sources):
        loc: Loc = ("sources", i)
        if not isinstance(raw, dict):
            issues.append(ConfigIssue(loc, "each source must be a mapping", origins.where(loc)))
            continue
        kind = raw.get("type")
        model = types.get(kind) if isinstance(kind, str) else None
        if model is None:
            known = ", ".join(sorted(types)) or "(none)"
            issues.append(ConfigIssue((*loc, "type"), f"unknown source type {kind!r}; "
                                      f"known: {known}", origins.where((*loc, "type"))))
            continue
        named = {"name": f"{kind}-{i}", **raw}
        try:
            result.append(model.model_validate(named))
        except ValidationError as exc:
            issues.extend(_pydantic_issues(exc, loc, origins))
    return result


def _file_order(issue: ConfigIssue) -> tuple[int, int]:
    """File issues by line first, then those from the environment or without a place."""
    where = issue.where.rsplit(":", 1)
    if len(where) == 2 and where[1].isdigit():
        return (0, int(where[1]))
    return (1, 0)


def parse_config(text: str, file: str = "<config>",
                 env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate config text; raises ConfigError with every issue found."""
    env = os.environ if env is None else env
    origins = _Origins(file)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            raw = {} if node is None else _construct(loader, node, (), origins)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        raise ConfigError([ConfigIssue((), f"not valid YAML: {exc.problem}", where)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue((), f"not valid YAML: {exc}", file)]) from None
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue((), "the config must be a YAML mapping", file)])

    issues: list[ConfigIssue] = []
    raw = _interpolate(raw, (), env, issues, origins)
    _apply_env_overrides(raw, env, origins, issues)
    sources = _validate_sources(raw.get("sources"), origins, issues)
    raw["sources"] = sources
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc, (), origins))
    if config is not None and not issues:
        for loc, message in config.semantic_issues():
            issues.append(ConfigIssue(loc, message, origins.where(loc)))
    if issues:
        raise ConfigError(sorted(issues, key=_file_order))
    assert config is not None
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; a missing file is an error, not an empty config."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue((), f"config file {path} does not exist")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([ConfigIssue((), f"cannot read config file {path}: {reason}")]) from None
    return parse_config(text, str(path), env)
