"""A trial's config as MLflow params, and back.

MLflow keeps params as text; a trial's :class:`snn.config.TrainConfig` holds numbers, lists,
mappings and None. :func:`params_of` writes what defines a trial, :func:`config_of_params`
reads it back with its types (the report's YAML, ``snn-study train --run-id`` where a run has
no ``config.yaml``).
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from search_spaces import DIMENSIONS
from snn.config import TrainConfig, UserData, dataset_name, meaningful
from snn.energy import Energy

__all__ = ["MACHINE_PARAMS", "config_of_params", "params_of"]


MACHINE_PARAMS = ("data_root",)  # where this machine keeps the data: not what defines a trial


def _relative(path: Any, root: str | None) -> str:
    """``path`` relative to ``root`` where it lies inside it, else as it is."""
    if root is None or not isinstance(path, str):
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except (ValueError, OSError):
        return path


def params_of(config: dict[str, Any]) -> dict[str, str]:
    """A trial's config as MLflow params: what defines the trial, not where this machine keeps
    its data (:data:`MACHINE_PARAMS`). A user's dataset mapping becomes ``dataset`` (its name)
    and one ``dataset.<key>`` param per key it sets, its files relative to the data root, so
    the UI can filter and compare on each and two machines' runs read the same. A dimension
    left to None is logged as the value the trial trained with (:meth:`Dimension.value`: the
    surrogate's own parameter, Eq. 4), on the same axis as the searched values and the paper's rows."""
    root = config.get("data_root")
    out = {}
    for k, v in meaningful(config).items():  # a vanilla trial has no λ₀
        if k in MACHINE_PARAMS:
            continue
        if k == "dataset" and isinstance(v, dict):
            out[k] = dataset_name(v)
            out.update({f"{k}.{key}": _relative(value, root) if key in ("train", "test") else str(value)
                        for key, value in v.items() if value is not None})
        elif k == "energy" and isinstance(v, dict):  # the energies the estimate used, a preset's resolved
            energy = Energy.model_validate(v)
            costs = energy.costs()
            out.update({"energy.preset": energy.name, "energy.mac_pj": f"{costs.mac_pj:g}",
                        "energy.ac_pj": f"{costs.ac_pj:g}"})
            if energy.max_uj is not None:
                out["energy.max_uj"] = f"{energy.max_uj:g}"
        elif v is None and k in DIMENSIONS:  # e.g. the surrogate's own parameter, as the trial trained with it
            out[k] = str(DIMENSIONS[k].value(config))
        else:
            out[k] = str(v)
    return {k: v[:6000] for k, v in out.items()}  # MLflow's longest param value


_EXPONENT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")  # PyYAML (YAML 1.1) reads 1e-05 as text


def _is_text(annotation: Any) -> bool:
    """Whether a field holds text only (str, a Literal of str, either or None)."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) in (Union, types.UnionType) and all(
        a is type(None) or _is_text(a) for a in args) and any(a is not type(None) for a in args)


def _param_value(raw: str, field_info: Any, nullable: bool = True) -> Any:
    """A param's value back as the config held it: text fields as they are (``"007"`` stays text),
    ``None`` as None (where ``nullable``: a None was logged), anything else as YAML (numbers,
    booleans, lists, mappings)."""
    if raw == "None" and nullable and (field_info is None or field_info.default is None):
        return None
    if field_info is not None and _is_text(field_info.annotation):
        return raw
    if _EXPONENT.fullmatch(raw):  # Python's str of a small or large float
        return float(raw)
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def config_of_params(params: dict[str, str], data_root: str | None = None) -> dict[str, Any]:
    """A trial's config from its MLflow params (the inverse of :func:`params_of`): each value
    parsed back to its type, a user's dataset mapping rebuilt from its ``dataset.<key>`` params.

    Args:
        params: The run's params.
        data_root: Where the data is on this machine (the params do not say): the config's
            ``data_root``, and the folder that a user's relative ``train``/``test`` files are
            in. None: TrainConfig's default, files as logged.
    """
    config: dict[str, Any] = {} if data_root is None else {"data_root": data_root}
    data: dict[str, Any] = {}
    energy: dict[str, Any] = {}
    for k, raw in params.items():
        if k.startswith("dataset."):
            key = k.removeprefix("dataset.")
            data[key] = _param_value(raw, UserData.model_fields.get(key), nullable=False)  # None is not logged
            if key in ("train", "test") and data_root is not None and not Path(raw).is_absolute():
                data[key] = str(Path(data_root) / raw)
        elif k == "dataset":
            config[k] = raw
        elif k.startswith("energy."):  # a preset by its name, else the user's own energies
            key = k.removeprefix("energy.")
            if key in ("preset", "max_uj") or params.get("energy.preset") == "custom":
                energy[key] = _param_value(raw, Energy.model_fields[key])
        else:
            config[k] = _param_value(raw, TrainConfig.model_fields.get(k))
    if data:
        config["dataset"] = data
    if energy:
        config["energy"] = {k: v for k, v in energy.items() if not (k == "preset" and v == "custom")}
    return config
