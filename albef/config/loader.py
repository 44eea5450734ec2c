"""Config loading: ``_base_`` chains, strict (typo-detecting) merging, ``key=value``
overrides, and a dump that reloads to the same run.

Merge rules, applied layer by layer over :func:`get_default_config_dict`:

* A key that does not exist in the tree is an error naming the file (or the command
  line), the full key and the closest valid keys.
* *Open* nodes accept new keys: a node that is null in the schema (its consumer checks
  it, e.g. ``data.synthetic`` against the generator's arguments), a component node (a mapping with a ``name`` key, whose
  other keys are its constructor arguments and are checked when it is built) and a
  component map (a mapping whose values are all component nodes or null, such as
  ``model.objectives``, where a new key adds a component), and a mapping that is
  empty in the schema (a free-form map such as ``data.transforms.hflip_swap_words``).
* A component node whose ``name`` changes is replaced, not merged: the old
  component's arguments would mean nothing to the new one.
* ``null`` switches a component off (``model.objectives.mlm=null``).
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Iterable, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from albef.config.defaults import get_default_config_dict
from albef.config.errors import ConfigError
from albef.config.paths import core_config_file
from albef.utils.file_io import PathManager

BASE_KEY = "_base_"
CORE_PREFIX = "albef://"  # `_base_: albef://pretrain/synthetic.yaml` names a config shipped with albef

# keys that moved, with where they are now (an old config or override gets told, not just "unknown")
MOVED_KEYS = {
    "eval.k_test": "eval.retrieval.k_test",
    "eval.batch_size": "eval.retrieval.batch_size",
    "eval.itm_batch_size": "eval.retrieval.itm_batch_size",
    "eval.max_tokens": "eval.retrieval.max_tokens",
    "eval.rerank_score": "eval.retrieval.rerank_score",
}


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``1e-4`` is a float, ``off``/``yes``/``no`` are strings."""


_Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def yaml_load(text_or_stream):
    return yaml.load(text_or_stream, Loader=_Yaml12Loader)


def _is_component(node: Any) -> bool:
    return isinstance(node, dict) and "name" in node


def _is_component_map(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and len(node) > 0
        and all(v is None or _is_component(v) for v in node.values())
        and any(_is_component(v) for v in node.values())
    )


def _all_keys(node: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, dict):
            out.extend(_all_keys(v, full + "."))
    return out


def _type_ok(old: Any, new: Any) -> bool:
    if old is None or new is None or isinstance(old, str) and old.startswith("${"):
        return True
    if isinstance(new, str) and new.startswith("${"):
        return True
    if isinstance(old, bool):
        return isinstance(new, bool)
    if isinstance(old, int):
        return isinstance(new, int) and not isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float)) and not isinstance(new, bool)
    if isinstance(old, str):
        return isinstance(new, str)
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    if isinstance(old, dict):
        return isinstance(new, dict)
    return True


_MISSING = object()


def merge_layer(base: dict, update: dict, source: str, root: dict | None = None, prefix: str = "", schema: Any = _MISSING) -> dict:
    """Merge ``update`` into ``base`` in place following the module's rules.

    ``schema`` is the default tree at the same path (``{}`` there marks a free-form map).
    """
    root = base if root is None else root
    if schema is _MISSING:
        schema = get_default_config_dict()
    # {} in the schema: a free-form map; null in the schema: a node whose contents are
    # checked by whatever consumes it (a component, the synthetic-data generator).
    free_form = schema is None or (isinstance(schema, dict) and not schema)
    open_node = _is_component(base) or _is_component_map(base) or free_form
    for key, value in update.items():
        full = f"{prefix}{key}"
        if key == BASE_KEY:
            raise ConfigError(f"{source}: '{BASE_KEY}' is only allowed at the top level of a config file.")
        if full in MOVED_KEYS and key not in base:
            raise ConfigError(
                f"{source}: config key '{full}' has moved to '{MOVED_KEYS[full]}' (evaluators are now a map of "
                f"components under 'eval', one per evaluation)."
            )
        if key not in base:
            if not open_node:
                candidates = _all_keys(root)
                close = difflib.get_close_matches(full, candidates, n=3, cutoff=0.6)
                local = difflib.get_close_matches(str(key), [str(k) for k in base], n=3, cutoff=0.5)
                for c in local:
                    c_full = f"{prefix}{c}"
                    if c_full not in close:
                        close.append(c_full)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(f"{source}: unknown config key '{full}'.{hint}")
            base[key] = value
            continue
        old = base[key]
        sub_schema = schema.get(key) if isinstance(schema, dict) else None
        if isinstance(value, dict) and isinstance(old, dict):
            if _is_component(old) and "name" in value and value["name"] != old["name"]:
                base[key] = value  # a different component: the old arguments do not apply
            elif not value and isinstance(sub_schema, dict) and not sub_schema:
                base[key] = {}  # `{}` empties a free-form map
            else:
                merge_layer(old, value, source, root, full + ".", sub_schema)
        else:
            if not _type_ok(old, value):
                raise ConfigError(
                    f"{source}: config key '{full}' expects a value like {old!r} "
                    f"({type(old).__name__}), got {value!r} ({type(value).__name__})."
                )
            base[key] = value
    return base


def _read_yaml(path: str) -> dict:
    if not PathManager.exists(path):
        raise ConfigError(f"Config file not found: {path}")
    with PathManager.open(path, "r") as f:
        try:
            data = yaml_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level, got {type(data).__name__}.")
    return data


def _file_layers(path: str, _seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """Return ``[(source, mapping), ...]`` for ``path`` and its ``_base_`` chain, bases first.
    ``albef://<name>`` names a config shipped with albef, here as in ``_base_``."""
    if path.startswith(CORE_PREFIX):
        path = core_config_file(path[len(CORE_PREFIX):])
    path = os.path.abspath(path) if "://" not in path else path
    if path in _seen:
        raise ConfigError(f"{path}: circular '{BASE_KEY}' chain: {' -> '.join(_seen + (path,))}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    layers: list[tuple[str, dict]] = []
    if bases is not None:
        for b in [bases] if isinstance(bases, str) else list(bases):
            if not isinstance(b, str):
                raise ConfigError(f"{path}: '{BASE_KEY}' must be a path or a list of paths, got {b!r}.")
            if b.startswith(CORE_PREFIX):
                b_path = core_config_file(b[len(CORE_PREFIX):])
            else:
                b_path = b if os.path.isabs(b) or "://" in b else os.path.join(os.path.dirname(path), b)
            layers.extend(_file_layers(b_path, _seen + (path,)))
    layers.append((path, data))
    return layers


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["a.b=1", "model.objectives.mlm=null"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form KEY=VALUE.")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"command line: override '{item}' has an invalid key.")
        try:
            value = yaml_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"command line: cannot parse the value of '{item}': {e}") from e
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: override '{item}' conflicts with an earlier override.")
        node[parts[-1]] = value
    return out


def load_config(path: str | None = None, overrides: Iterable[str] = (), *, text: str | None = None) -> DictConfig:
    """Defaults, then ``path`` with its ``_base_`` chain (or the YAML ``text``, e.g. the config a
    checkpoint carries, named ``path`` in errors), then ``overrides``.

    Returns a read-only-structured :class:`DictConfig` (struct mode: reading or
    writing a missing key raises).
    """
    cfg = get_default_config_dict()
    if text is not None:
        layer = yaml_load(text)
        if not isinstance(layer, dict):
            raise ConfigError(f"{path or 'config text'}: the config is not a YAML mapping")
        layer.pop("_base_", None)
        merge_layer(cfg, layer, path or "config text")
    elif path is not None:
        for source, layer in _file_layers(path):
            merge_layer(cfg, layer, source)
    overrides = list(overrides)
    if overrides:
        merge_layer(cfg, parse_overrides(overrides), "command line")
    conf = OmegaConf.create(cfg)
    try:
        OmegaConf.to_container(conf, resolve=True)  # surface bad interpolations now, not mid-run
    except Exception as e:  # omegaconf raises several error types here
        key = getattr(e, "full_key", None)
        where = f"config key '{key}'" if key else "config"
        msg = str(e).split("\n")[0]
        raise ConfigError(f"{path or 'config'}: {where} cannot be resolved: {msg}") from e
    OmegaConf.set_struct(conf, True)
    return conf


def config_to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def dump_config(cfg: DictConfig, path: str) -> None:
    """Write the merged, resolved config; ``load_config(path)`` rebuilds the same tree."""
    PathManager.mkdirs(os.path.dirname(path) or ".")
    with PathManager.open(path, "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))))
