"""Checkpoints: atomic saves, safe loading (no code from the file runs), and errors that name what is wrong.

SB3 stores the attributes of a model that JSON cannot hold (spaces, schedules, the policy class, NumPy arrays...) as
cloudpickle blobs in the ``data`` member of the zip, and its ``load`` unpickles them: a crafted checkpoint runs code.
sb3_stepnft also writes a JSON-only description of those attributes (the member :data:`SAFE_MEMBER`) and its
``load`` rebuilds them from it, so no blob is ever unpickled. Anything it cannot rebuild is refused with a clear
error unless the caller passes ``trust_checkpoint=True`` (SB3's behaviour: it runs whatever the file contains).
Classes are stored as import paths and resolved only inside an allow-list (torch.nn / torch.optim / SB3 /
sb3_stepnft / transformers configs, plus :func:`allow_class`). ``.pth`` members are loaded with
``torch.load(weights_only=True)`` as before. See docs/safety.md.
"""

import base64
import collections
import dataclasses
import importlib
import inspect
import io
import json
import os
import pathlib
import stat
import warnings
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

SAFE_MEMBER = "sb3_stepnft.json"
SAFE_FORMAT = "sb3_stepnft/safe-checkpoint/1"
POLICY_KEY = "sb3_stepnft_safe"  # key of the JSON description inside a policy file saved by FlowPolicy.save

#: Module prefixes whose classes a checkpoint may name (policy class, activation, extractor, optimizer, configs).
ALLOWED_MODULE_PREFIXES = ("torch.nn.", "torch.optim.", "stable_baselines3.", "sb3_stepnft.", "transformers.")
#: Attributes that hold schedules (functions of the remaining progress): a custom function is stored as samples.
SCHEDULE_KEYS = {"learning_rate", "lr_schedule", "clip_range", "clip_range_vf", "critic_learning_rate", "critic_lr_schedule"}
SCHEDULE_SAMPLES = 101

_EXTRA_ALLOWED: dict[str, type] = {}


class CheckpointError(ValueError):
    """A checkpoint is damaged, of another algorithm, or holds invalid values."""


class UnsafeCheckpointError(CheckpointError):
    """Loading the checkpoint would unpickle Python objects (run code from the file): refused without opt-in."""


class _NotEncodable(TypeError):
    pass


# ------------------------------------------------------------------------------------------------- classes
def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def allow_class(cls: type) -> type:
    """Let checkpoints name ``cls`` (e.g. your own features extractor in ``policy_kwargs``): call it before saving
    and before loading. Returns ``cls`` (usable as a decorator). Only classes, never functions, can be allowed."""
    if not inspect.isclass(cls):
        raise TypeError(f"allow_class needs a class, got {cls!r}")
    _EXTRA_ALLOWED[class_path(cls)] = cls
    return cls


def _allowed_bases() -> tuple[type, ...]:
    from stable_baselines3.common.policies import BaseModel

    bases: list[type] = [th.nn.Module, th.optim.Optimizer, BaseModel]
    try:  # transformers configs (the VLA backbone), only when transformers is installed
        import transformers

        bases.append(transformers.PretrainedConfig)
    except ImportError:
        pass
    return tuple(bases)


def _class_is_allowed(cls: type) -> bool:
    path = class_path(cls)
    if _EXTRA_ALLOWED.get(path) is cls:
        return True
    return path.startswith(ALLOWED_MODULE_PREFIXES) and issubclass(cls, _allowed_bases())


def resolve_class(path: str, base: type | None = None) -> type:
    """The class at import path ``path``, if it is on the allow-list (and a subclass of ``base``)."""
    if not isinstance(path, str):
        raise UnsafeCheckpointError(f"A class in the checkpoint is stored as {path!r}, not as an import path")
    cls = _EXTRA_ALLOWED.get(path)
    if cls is None:
        if not path.startswith(ALLOWED_MODULE_PREFIXES):
            raise UnsafeCheckpointError(
                f"The checkpoint names the class {path!r}, which is outside the allow-list {ALLOWED_MODULE_PREFIXES}. "
                "If it is your own class, call sb3_stepnft.common.persistence.allow_class(YourClass) before loading; "
                "or pass trust_checkpoint=True if you trust the file (this unpickles it and may run code)."
            )
        cls = None
        parts = path.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes (qualname)
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for name in parts[cut:]:
                obj = getattr(obj, name, None)
            cls = obj
            break
    if not inspect.isclass(cls) or not _class_is_allowed(cls) or class_path(cls) != path:
        raise UnsafeCheckpointError(
            f"The checkpoint names {path!r}, which is not an allowed class (subclasses of torch.nn.Module, "
            "torch.optim.Optimizer, SB3 policies or transformers configs from those packages)."
        )
    if base is not None and not issubclass(cls, base):
        raise CheckpointError(f"The checkpoint names {path!r} where a subclass of {base.__name__} is expected")
    return cls


# ------------------------------------------------------------------------------------------------- schedules
class SampledSchedule:
    """A schedule restored from samples at evenly spaced remaining progress (1 → 0), linearly interpolated: what a
    custom schedule function becomes in a safe checkpoint."""

    def __init__(self, values: list[float], function: str | None = None):
        self.values = [float(v) for v in values]
        self.function = function  # the name of the function it was sampled from (for messages)
        if len(self.values) < 2:
            raise ValueError("SampledSchedule needs at least two samples")

    def __call__(self, progress_remaining: float) -> float:
        n = len(self.values) - 1
        position = min(max(1.0 - float(progress_remaining), 0.0), 1.0) * n
        index = min(int(position), n - 1)
        frac = position - index
        return (1.0 - frac) * self.values[index] + frac * self.values[index + 1]

    def __repr__(self) -> str:
        return f"SampledSchedule({len(self.values)} samples, {self.values[0]:g} -> {self.values[-1]:g})"


def _encode_schedule(value: Any) -> dict[str, Any]:
    from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule

    if isinstance(value, FloatSchedule):
        return {"__safe__": "float_schedule", "inner": _encode_schedule(value.value_schedule)}
    if isinstance(value, ConstantSchedule):
        return {"__safe__": "constant_schedule", "value": _encode(value.val)}
    if isinstance(value, LinearSchedule):
        return {"__safe__": "linear_schedule", "start": value.start, "end": value.end, "end_fraction": value.end_fraction}
    if isinstance(value, SampledSchedule):
        return {"__safe__": "sampled_schedule", "values": value.values, "function": value.function}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"__safe__": "constant_schedule", "value": float(value)}
    if callable(value) and not inspect.isclass(value):
        try:
            samples = [float(value(1.0 - i / (SCHEDULE_SAMPLES - 1))) for i in range(SCHEDULE_SAMPLES)]
        except Exception as error:  # noqa: BLE001
            raise _NotEncodable(f"the schedule {value!r} failed when sampled: {error}") from error
        if all(s == samples[0] for s in samples):
            return {"__safe__": "constant_schedule", "value": samples[0]}
        return {"__safe__": "sampled_schedule", "values": samples, "function": getattr(value, "__qualname__", repr(value))}
    raise _NotEncodable(f"{type(value).__name__} is not a schedule")


# ------------------------------------------------------------------------------------------------- values
def _encode_array(array: np.ndarray) -> dict[str, Any]:
    if array.dtype.kind not in "biufc" or array.dtype.fields is not None:
        raise _NotEncodable(f"arrays of dtype {array.dtype} cannot be stored safely")
    array = np.ascontiguousarray(array)
    return {
        "__safe__": "ndarray",
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _decode_array(obj: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(obj["dtype"])
    if dtype.kind not in "biufc" or dtype.fields is not None:
        raise CheckpointError(f"The checkpoint holds an array of dtype {dtype}, which safe loading does not read")
    shape = tuple(int(n) for n in obj["shape"])
    raw = base64.b64decode(obj["data"].encode("ascii"), validate=True)
    if len(raw) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise CheckpointError(f"An array in the checkpoint is damaged: {len(raw)} bytes for shape {shape} of {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _encode_space(space: spaces.Space) -> dict[str, Any]:
    kind = type(space)
    if kind is spaces.Box:
        return {"__safe__": "space", "type": "Box", "low": _encode_array(space.low), "high": _encode_array(space.high),
                "shape": list(space.shape), "dtype": np.dtype(space.dtype).str}  # fmt: skip
    if kind is spaces.Discrete:
        return {"__safe__": "space", "type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if kind is spaces.MultiBinary:
        n = space.n
        return {"__safe__": "space", "type": "MultiBinary", "n": [int(v) for v in np.atleast_1d(n)] if np.ndim(n) else int(n)}
    if kind is spaces.MultiDiscrete:
        return {"__safe__": "space", "type": "MultiDiscrete", "nvec": _encode_array(space.nvec),
                "start": _encode_array(space.start), "dtype": np.dtype(space.dtype).str}  # fmt: skip
    if kind is spaces.Dict:
        return {"__safe__": "space", "type": "Dict", "spaces": [[k, _encode_space(s)] for k, s in space.spaces.items()]}
    if kind is spaces.Tuple:
        return {"__safe__": "space", "type": "Tuple", "spaces": [_encode_space(s) for s in space.spaces]}
    if kind is spaces.Text:
        return {"__safe__": "space", "type": "Text", "min_length": space.min_length, "max_length": space.max_length,
                "charset": "".join(sorted(space.character_set))}  # fmt: skip
    raise _NotEncodable(f"{kind.__name__} spaces cannot be stored safely")


def _decode_space(obj: dict[str, Any]) -> spaces.Space:
    kind = obj.get("type")
    if kind == "Box":
        return spaces.Box(low=_decode_array(obj["low"]), high=_decode_array(obj["high"]), shape=tuple(obj["shape"]),
                          dtype=_numeric_dtype(obj["dtype"]))  # fmt: skip
    if kind == "Discrete":
        return spaces.Discrete(int(obj["n"]), start=int(obj["start"]))
    if kind == "MultiBinary":
        return spaces.MultiBinary(obj["n"])
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(
            _decode_array(obj["nvec"]), dtype=_numeric_dtype(obj["dtype"]), start=_decode_array(obj["start"])
        )
    if kind == "Dict":
        return spaces.Dict({str(k): _decode_space(s) for k, s in obj["spaces"]})
    if kind == "Tuple":
        return spaces.Tuple([_decode_space(s) for s in obj["spaces"]])
    if kind == "Text":
        return spaces.Text(max_length=int(obj["max_length"]), min_length=int(obj["min_length"]), charset=str(obj["charset"]))
    raise CheckpointError(f"Unknown space type {kind!r} in the checkpoint")


def _numeric_dtype(name: str) -> np.dtype:
    dtype = np.dtype(name)
    if dtype.kind not in "biufc":
        raise CheckpointError(f"dtype {name!r} in the checkpoint is not numeric")
    return dtype


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _encode(value: Any) -> Any:
    """A JSON-only description of ``value`` (raises _NotEncodable)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value
    if isinstance(value, np.generic):
        if isinstance(value, (np.bool_, np.integer, np.floating, np.complexfloating)):
            return {"__safe__": "npscalar", "array": _encode_array(np.asarray(value))}
        raise _NotEncodable(f"NumPy scalars of type {type(value).__name__} cannot be stored safely")
    if isinstance(value, np.ndarray):
        return _encode_array(value)
    if isinstance(value, th.Tensor):
        if value.dtype == th.bfloat16:
            return {"__safe__": "tensor", "array": _encode_array(value.detach().float().cpu().numpy()), "dtype": "bfloat16"}
        return {"__safe__": "tensor", "array": _encode_array(value.detach().cpu().numpy())}
    if isinstance(value, th.device):
        return {"__safe__": "device", "name": str(value)}
    if isinstance(value, th.dtype):
        return {"__safe__": "torch_dtype", "name": str(value).replace("torch.", "")}
    if isinstance(value, spaces.Space):
        return _encode_space(value)
    if isinstance(value, collections.deque):
        return {"__safe__": "deque", "maxlen": value.maxlen, "items": [_encode(v) for v in value]}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"__safe__": "tuple", "items": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"__safe__": "set", "items": [_encode(v) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and "__safe__" not in value:
            return {k: _encode(v) for k, v in value.items()}
        return {"__safe__": "dict", "items": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, np.random.Generator):
        name = type(value.bit_generator).__name__
        if name not in _BIT_GENERATORS:
            raise _NotEncodable(f"bit generator {name}")
        return {"__safe__": "np_generator", "bit_generator": name, "state": _encode(value.bit_generator.state)}
    if isinstance(value, np.random.RandomState):
        return {"__safe__": "np_random_state", "state": _encode(value.get_state(legacy=False))}
    if inspect.isclass(value):
        if not _class_is_allowed(value):
            raise _NotEncodable(f"the class {class_path(value)} is not on the allow-list (see allow_class)")
        return {"__safe__": "class", "path": class_path(value)}
    try:
        import transformers

        if isinstance(value, transformers.PretrainedConfig):
            if not _class_is_allowed(type(value)):
                raise _NotEncodable(f"the config class {class_path(type(value))} is not on the allow-list")
            return {"__safe__": "hf_config", "class": class_path(type(value)),
                    "config": json.loads(value.to_json_string(use_diff=False))}  # fmt: skip
    except ImportError:
        pass
    if dataclasses.is_dataclass(value) and not inspect.isclass(value) and _class_is_value_allowed(type(value)):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__safe__": "dataclass", "class": class_path(type(value)), "fields": fields}
    try:
        return _encode_schedule(value)
    except _NotEncodable:
        pass
    raise _NotEncodable(f"objects of type {type(value).__module__}.{type(value).__qualname__} cannot be stored safely")


def _class_is_value_allowed(cls: type) -> bool:
    path = class_path(cls)
    return _EXTRA_ALLOWED.get(path) is cls or path.startswith("sb3_stepnft.")


def _decode(obj: Any) -> Any:
    """Inverse of :func:`_encode`: only data, allow-listed classes and a fixed set of safe types are rebuilt."""
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag = obj.get("__safe__")
    if tag is None:
        return {k: _decode(v) for k, v in obj.items()}
    if tag == "ndarray":
        return _decode_array(obj)
    if tag == "npscalar":
        return _decode_array(obj["array"])[()]
    if tag == "tensor":
        tensor = th.as_tensor(_decode_array(obj["array"]))
        return tensor.to(th.bfloat16) if obj.get("dtype") == "bfloat16" else tensor
    if tag == "device":
        return th.device(str(obj["name"]))
    if tag == "torch_dtype":
        dtype = getattr(th, str(obj["name"]), None)
        if not isinstance(dtype, th.dtype):
            raise CheckpointError(f"Unknown torch dtype {obj['name']!r} in the checkpoint")
        return dtype
    if tag == "space":
        return _decode_space(obj)
    if tag == "deque":
        return collections.deque((_decode(v) for v in obj["items"]), maxlen=obj["maxlen"])
    if tag == "tuple":
        return tuple(_decode(v) for v in obj["items"])
    if tag == "set":
        return {_decode(v) for v in obj["items"]}
    if tag == "dict":
        return {_decode(k): _decode(v) for k, v in obj["items"]}
    if tag == "np_generator":
        name = obj["bit_generator"]
        if name not in _BIT_GENERATORS:
            raise CheckpointError(f"Unknown NumPy bit generator {name!r} in the checkpoint")
        generator = np.random.Generator(getattr(np.random, name)())
        generator.bit_generator.state = _decode(obj["state"])
        return generator
    if tag == "np_random_state":
        random_state = np.random.RandomState()
        random_state.set_state(_decode(obj["state"]))
        return random_state
    if tag == "class":
        return resolve_class(obj["path"])
    if tag == "hf_config":
        import transformers

        cls = resolve_class(obj["class"], transformers.PretrainedConfig)
        return cls.from_dict(dict(obj["config"]))
    if tag == "dataclass":
        path = obj["class"]
        cls = _EXTRA_ALLOWED.get(path)
        if cls is None and path.startswith("sb3_stepnft."):
            module_name, _, name = path.rpartition(".")
            cls = getattr(importlib.import_module(module_name), name, None)
        if cls is None or not dataclasses.is_dataclass(cls) or not _class_is_value_allowed(cls):
            raise UnsafeCheckpointError(f"The checkpoint holds a {path!r} value, which is not an allowed data class")
        return cls(**{k: _decode(v) for k, v in obj["fields"].items()})
    if tag in ("float_schedule", "constant_schedule", "linear_schedule", "sampled_schedule"):
        return _decode_schedule(obj)
    raise CheckpointError(f"Unknown value tag {tag!r} in the checkpoint's safe description (saved by a newer version?)")


def _decode_schedule(obj: dict[str, Any]) -> Callable[[float], float]:
    from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule

    tag = obj["__safe__"]
    if tag == "float_schedule":
        return FloatSchedule(_decode_schedule(obj["inner"]))
    if tag == "constant_schedule":
        return ConstantSchedule(_decode(obj["value"]))
    if tag == "linear_schedule":
        return LinearSchedule(float(obj["start"]), float(obj["end"]), float(obj["end_fraction"]))
    return SampledSchedule(obj["values"], function=obj.get("function"))


def encode_value(value: Any) -> Any:
    """Public form of the safe JSON encoding (raises TypeError for values it cannot describe)."""
    return _encode(value)


def decode_value(obj: Any) -> Any:
    """Rebuild a value from :func:`encode_value`'s description; never unpickles anything."""
    return _decode(obj)


# ------------------------------------------------------------------------------------------------- describe
def _json_serializable(value: Any) -> bool:
    from stable_baselines3.common.save_util import is_json_serializable

    return is_json_serializable(value)


def _saved_data(model: Any, exclude=None, include=None) -> dict[str, Any]:
    """The attributes SB3's ``BaseAlgorithm.save`` puts into the ``data`` member (same selection rules)."""
    data = model.__dict__.copy()
    excluded = set(exclude or []).union(model._excluded_save_params())
    if include is not None:
        excluded = excluded.difference(include)
    state_dicts, torch_variables = model._get_torch_save_params()
    for name in state_dicts + torch_variables:
        excluded.add(name.split(".")[0])
    for name in excluded:
        data.pop(name, None)
    return data


def describe_values(data: dict[str, Any], owner: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Safe descriptions of the entries of ``data`` that JSON cannot hold, and the reasons of those that cannot be
    described (they will need ``trust_checkpoint=True`` or ``custom_objects`` on load)."""
    entries: dict[str, Any] = {}
    unsafe: dict[str, str] = {}
    for key, value in data.items():
        if _json_serializable(value):
            continue
        try:
            entries[key] = _encode_schedule(value) if key in SCHEDULE_KEYS and callable(value) else _encode(value)
        except _NotEncodable as error:
            unsafe[key] = str(error)
    if unsafe:
        details = "; ".join(f"{key!r}: {reason}" for key, reason in unsafe.items())
        warnings.warn(
            f"{owner}: these attributes cannot be stored as safe data ({details}). Loading the file will need "
            "custom_objects={...} for them, or trust_checkpoint=True (which unpickles them and may run code).",
            UserWarning,
            stacklevel=4,
        )
    return entries, unsafe


def _package_version() -> str:
    try:
        from sb3_stepnft import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def describe_model(model: Any, exclude=None, include=None) -> dict[str, Any]:
    """The JSON-only :data:`SAFE_MEMBER` of a model checkpoint."""
    entries, unsafe = describe_values(_saved_data(model, exclude, include), f"{type(model).__name__}.save")
    return {
        "format": SAFE_FORMAT,
        "sb3_stepnft_version": _package_version(),
        "algorithm": class_path(type(model)),
        "algorithm_mro": [class_path(c) for c in type(model).__mro__ if c is not object],
        "entries": entries,
        "unsafe": sorted(unsafe),
    }


# ------------------------------------------------------------------------------------------------- saving
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_name(target: pathlib.Path, pid: int | None = None) -> pathlib.Path:
    return target.with_name(f".{target.name}.{os.getpid() if pid is None else pid}.tmp")


def clean_stale_temp_files(target: pathlib.Path) -> list[pathlib.Path]:
    """Remove the temporary files left next to ``target`` by saves that were killed (their process is gone)."""
    removed = []
    prefix = f".{target.name}."
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        name = path.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid_text = name[len(prefix) : -len(".tmp")]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _fsync_path(path: pathlib.Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # some platforms cannot open directories
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def check_writable_target(target: pathlib.Path) -> None:
    """PermissionError when ``target`` exists and is read-only: a save never silently replaces a protected file."""
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return
    if target.is_dir():
        raise IsADirectoryError(f"Cannot save to {target}: it is a directory. Pass a file path such as {target / 'model.zip'}")
    if not mode & stat.S_IWUSR:
        raise PermissionError(
            f"Cannot save to {target}: the file is read-only (mode {stat.S_IMODE(mode):04o}), and save does not replace "
            "protected files. Save to another path, or make it writable first (chmod u+w) if you mean to overwrite it."
        )


def atomic_save(
    save_fn,
    path: str | pathlib.Path | io.BufferedIOBase,
    extra_members: dict[str, bytes] | None = None,
    default_suffix: str | None = ".zip",
    **kwargs: Any,
) -> None:
    """Call ``save_fn(file, **kwargs)`` on a temporary file next to ``path``, then rename it into place.

    A crash, a kill or an exception during saving leaves any earlier file at ``path`` untouched; the temporary file
    is removed on errors, and those of killed saves (whose process is gone) are removed by the next save to the same
    path. The data is fsynced before the rename (and the directory after it). A read-only ``path`` is refused.
    ``extra_members`` are added to the zip written by ``save_fn``. SB3's convention of adding ``.zip`` to a path
    without suffix is kept (``default_suffix``). File objects are written in place (no rename).
    """
    if not isinstance(path, (str, os.PathLike)):
        if not extra_members:
            save_fn(path, **kwargs)
            return
        buffer = io.BytesIO()
        save_fn(buffer, **kwargs)
        _add_members(buffer, extra_members)
        path.write(buffer.getvalue())
        return
    target = pathlib.Path(path)
    if target.suffix == "" and default_suffix:
        target = target.with_suffix(default_suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    check_writable_target(target)
    clean_stale_temp_files(target)
    tmp = _temp_name(target)
    try:
        with open(tmp, "wb") as file:
            save_fn(file, **kwargs)
        if extra_members:
            _add_members(tmp, extra_members)
        _fsync_path(tmp)
        os.replace(tmp, target)
        _fsync_path(target.parent, directory=True)
    finally:
        if tmp.exists():
            tmp.unlink()


def _add_members(archive_file, members: dict[str, bytes]) -> None:
    if isinstance(archive_file, io.BytesIO):
        archive_file.seek(0)
    with zipfile.ZipFile(archive_file, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def save_checkpoint(model: Any, sb3_save, path, exclude=None, include=None) -> None:
    """What the algorithms' ``save`` calls: SB3's ``save`` (``sb3_save``) through :func:`atomic_save`, with the
    JSON-only description :data:`SAFE_MEMBER` that :func:`load_checkpoint` rebuilds the model from."""
    description = describe_model(model, exclude, include)
    member = json.dumps(description, indent=1).encode("utf-8")
    atomic_save(sb3_save, path, extra_members={SAFE_MEMBER: member}, exclude=exclude, include=include)


# ------------------------------------------------------------------------------------------------- inspecting
@dataclasses.dataclass
class CheckpointInfo:
    target: Any
    data_json: str
    data: dict[str, Any]  # the JSON of the data member, serialized entries left as they are
    safe: dict[str, Any] | None  # the parsed SAFE_MEMBER, or None (saved before safe checkpoints, or foreign)

    @property
    def serialized_keys(self) -> list[str]:
        return [k for k, v in self.data.items() if isinstance(v, dict) and ":serialized:" in v]


_ALGORITHM_MARKERS = (  # attributes only one flow algorithm saves (to name the saver of an old checkpoint)
    ("StepNFT", ("trust_region", "ema_decay")),
    ("FlowPPO", ("vf_huber_delta",)),
    ("FlowGRPO", ("group_size",)),
)


def _guess_algorithm(data: dict[str, Any]) -> str | None:
    for name, keys in _ALGORITHM_MARKERS:
        if all(k in data for k in keys):
            return name
    return None


def _resolve_target(path: Any) -> Any:
    if not isinstance(path, (str, os.PathLike)):
        return path
    target = pathlib.Path(path)
    if not target.exists() and target.with_suffix(".zip").exists():
        target = target.with_suffix(".zip")
    return target


def inspect_checkpoint(path: Any, algorithm: type | str) -> CheckpointInfo:
    """Read a checkpoint's ``data`` and :data:`SAFE_MEMBER` without unpickling anything, with a clear
    :class:`CheckpointError` for truncated or damaged files, non-SB3 zips and checkpoints of other algorithms."""
    algorithm_name = algorithm if isinstance(algorithm, str) else algorithm.__name__
    target = _resolve_target(path)
    if isinstance(target, pathlib.Path):
        if not target.exists():
            raise FileNotFoundError(f"No checkpoint at {path} (nor {pathlib.Path(path).with_suffix('.zip')})")
        if target.is_dir():
            raise IsADirectoryError(f"{target} is a directory, not a {algorithm_name} checkpoint (a .zip file)")
        with open(target, "rb") as file:
            head = file.read(4)
        source: Any = target
    else:
        position = target.tell() if hasattr(target, "tell") else 0
        head = target.read(4)
        target.seek(position)
        source = target
    fix = f"Restore it from a backup or save the model again with {algorithm_name}.save()."
    if not zipfile.is_zipfile(source):
        if isinstance(target, io.IOBase):
            target.seek(position)
        if head.startswith(b"PK"):
            raise CheckpointError(
                f"{target} is truncated or corrupted: it starts like a zip archive but its end (the central directory) is "
                f"missing, e.g. a copy or download that did not finish. {fix}"
            )
        raise CheckpointError(
            f"{target} is not a {algorithm_name} checkpoint: it is not a zip archive (corrupted or foreign file). {fix}"
        )
    if isinstance(target, io.IOBase):
        target.seek(position)
    try:
        with zipfile.ZipFile(source) as archive:
            names = set(archive.namelist())
            if "data" not in names or "policy.pth" not in names:
                raise CheckpointError(
                    f"{target} is not an SB3 checkpoint (it lacks 'data' or 'policy.pth'; found {sorted(names)[:6]}). "
                    f"Save models with {algorithm_name}.save()."
                )
            try:
                bad = archive.testzip()
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as error:
                raise CheckpointError(f"{target} is damaged: reading its members failed ({error}). {fix}") from error
            if bad is not None:
                raise CheckpointError(
                    f"{target} is damaged: its member {bad!r} fails the CRC check (the bytes changed). {fix}"
                )
            raw_data = archive.read("data")
            raw_safe = archive.read(SAFE_MEMBER) if SAFE_MEMBER in names else None
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"{target} is damaged ({error}). {fix}") from error
    finally:
        if isinstance(target, io.IOBase):
            target.seek(position)
    try:
        data_json = raw_data.decode("utf-8")
        data = json.loads(data_json)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{target} is damaged: its 'data' member is not valid JSON ({error}). {fix}") from error
    safe = None
    if raw_safe is not None:
        try:
            safe = json.loads(raw_safe.decode("utf-8"))
            if not isinstance(safe, dict) or safe.get("format") != SAFE_FORMAT or not isinstance(safe.get("entries"), dict):
                raise ValueError(f"unknown format {safe.get('format') if isinstance(safe, dict) else safe!r}")
        except (UnicodeDecodeError, ValueError) as error:
            raise CheckpointError(f"{target} is damaged: its {SAFE_MEMBER!r} member is unreadable ({error}). {fix}") from error
    info = CheckpointInfo(target, data_json, data, safe)
    _check_algorithm(info, algorithm)
    return info


def _check_algorithm(info: CheckpointInfo, algorithm: type | str) -> None:
    name = algorithm if isinstance(algorithm, str) else algorithm.__name__
    if info.safe is not None:
        saved_path = info.safe.get("algorithm", "?")
        saved_mro = info.safe.get("algorithm_mro", [saved_path])
        if isinstance(algorithm, type):
            own_mro = [class_path(c) for c in algorithm.__mro__]
            if class_path(algorithm) not in saved_mro and saved_path not in own_mro:
                saved_name = str(saved_path).rpartition(".")[2]
                raise CheckpointError(
                    f"{info.target} was saved by {saved_name} ({saved_path}), not by {name}: load it with "
                    f"{saved_name}.load(...)."
                )
        return
    if "sb3_stepnft" not in info.data_json:
        raise CheckpointError(
            f"{info.target} was saved by another algorithm or policy family (no sb3_stepnft flow policy in it): "
            f"load it with the class that saved it, e.g. stable_baselines3.PPO.load(...), not {name}.load()."
        )
    guessed = _guess_algorithm(info.data)
    if guessed is not None and isinstance(algorithm, type):
        names = [c.__name__ for c in algorithm.__mro__]
        if guessed not in names and name in {n for n, _ in _ALGORITHM_MARKERS}:
            raise CheckpointError(
                f"{info.target} was saved by {guessed}, not by {name}: load it with sb3_stepnft.{guessed}.load(...)."
            )


def check_checkpoint(path: Any, algorithm_name: str) -> None:
    """Raise a CheckpointError (a ValueError) naming the problem when ``path`` is not a readable checkpoint of a flow
    algorithm (kept for callers of the earlier API; :func:`load_checkpoint` does this and more)."""
    if isinstance(path, (str, os.PathLike)) and not _resolve_target(path).exists():
        return  # SB3 raises its own FileNotFoundError
    inspect_checkpoint(path, algorithm_name)


# ------------------------------------------------------------------------------------------------- loading
_OLD_CHECKPOINT = (
    "{target} was saved before sb3-stepnft wrote safe checkpoints (it has no {member!r} member), so loading it means "
    "unpickling the Python objects in its 'data' member ({keys}), which can run arbitrary code. "
)


def _safe_custom_objects(info: CheckpointInfo, given: dict[str, Any], trust: bool) -> dict[str, Any]:
    """``custom_objects`` for SB3's ``load`` that replace every pickled entry (nothing is unpickled), or the user's
    own when the checkpoint is trusted."""
    serialized = info.serialized_keys
    if trust:
        if info.safe is None:
            warnings.warn(
                _OLD_CHECKPOINT.format(target=info.target, member=SAFE_MEMBER, keys=", ".join(serialized))
                + "Loading it by unpickling because trust_checkpoint=True. Save it again to get a safe checkpoint.",
                UserWarning,
                stacklevel=4,
            )
        return given
    objects: dict[str, Any] = {}
    entries = info.safe["entries"] if info.safe is not None else {}
    missing = []
    for key in serialized:
        if key in given:
            continue
        if key in entries:
            objects[key] = _decode(entries[key])
        else:
            missing.append(key)
    if missing and info.safe is None:
        raise UnsafeCheckpointError(
            _OLD_CHECKPOINT.format(target=info.target, member=SAFE_MEMBER, keys=", ".join(missing))
            + "If you trust where the file comes from, load it with trust_checkpoint=True, then save it again to get a "
            "safe checkpoint."
        )
    if missing:
        raise UnsafeCheckpointError(
            f"{info.target} holds pickled Python objects that safe loading cannot rebuild: {missing}. Loading them would "
            "run code from the file. Pass them yourself with custom_objects={...}, or, if you trust where the file "
            "comes from, load it with trust_checkpoint=True."
        )
    sampled = [k for k, v in objects.items() if isinstance(getattr(v, "value_schedule", v), SampledSchedule)]
    if sampled:
        warnings.warn(
            f"{info.target}: the schedules {sampled} were Python functions when saved; safe loading restores them as "
            f"piecewise-linear interpolations of {SCHEDULE_SAMPLES} samples. For the exact functions, pass them again "
            "(load(..., custom_objects={'learning_rate': fn, 'lr_schedule': fn})), or pass trust_checkpoint=True if you "
            "trust the file.",
            UserWarning,
            stacklevel=4,
        )
    objects.update(given)
    return objects


_NOT_HYPERPARAMETERS = {"self", "policy", "env", "device", "_init_setup_model", "tensorboard_log", "verbose", "seed"}


def validate_hyperparameters(cls: type, data: dict[str, Any], overrides: dict[str, Any], target: Any) -> None:
    """Run the constructor's checks on the saved hyper-parameters (and the ones given to ``load``): a dry construction
    without env or networks. A value edited out of range is a CheckpointError naming it."""
    signature = inspect.signature(cls.__init__)
    params = {}
    for name in signature.parameters:
        if name in _NOT_HYPERPARAMETERS or signature.parameters[name].kind in (
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        ):
            continue
        if name in overrides:
            params[name] = overrides[name]
        elif name in data:
            params[name] = data[name]
    policy = data.get("policy_class")
    if policy is None or isinstance(policy, dict):
        return  # not rebuilt (trusted load without it): SB3 reports it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(policy=policy, env=None, device="cpu", _init_setup_model=False, **params)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise CheckpointError(
            f"{target}: a saved hyper-parameter of {cls.__name__} is invalid: {error}. The checkpoint's 'data' member "
            "was edited or damaged. Correct the value there, or pass a valid one to load(path, name=value)."
        ) from error


def load_checkpoint(
    cls: type,
    sb3_load,
    path,
    env=None,
    device="auto",
    custom_objects=None,
    print_system_info=False,
    force_reset=True,
    trust_checkpoint: bool = False,
    **kwargs,
):
    """What the algorithms' ``load`` calls: diagnose the file (:func:`inspect_checkpoint`), rebuild the pickled
    entries of ``data`` from the JSON-only description (refuse what cannot be rebuilt unless ``trust_checkpoint``),
    validate the hyper-parameters like ``__init__``, then run SB3's ``load`` (``sb3_load``) with those objects, so it
    unpickles nothing."""
    from stable_baselines3.common.save_util import json_to_data

    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(f"custom_objects must be a dict or None, got {type(custom_objects).__name__}")
    if not isinstance(trust_checkpoint, bool):
        raise TypeError(f"trust_checkpoint must be True or False, got {trust_checkpoint!r}")
    info = inspect_checkpoint(path, cls)
    objects = _safe_custom_objects(info, dict(custom_objects or {}), trust_checkpoint)
    if trust_checkpoint:
        data = json_to_data(info.data_json, custom_objects=objects)
    else:  # every serialized entry is replaced: json_to_data unpickles nothing
        data = json_to_data(info.data_json, custom_objects=objects)
    if "policy_class" in data and not isinstance(data["policy_class"], dict):
        from sb3_stepnft.common.policies import BaseFlowPolicy

        if not (inspect.isclass(data["policy_class"]) and issubclass(data["policy_class"], BaseFlowPolicy)):
            raise CheckpointError(f"{info.target} names the policy class {data['policy_class']!r}, which is not a flow policy")
    validate_hyperparameters(cls, data, kwargs, info.target)
    if isinstance(info.target, io.IOBase):
        info.target.seek(0)
    source = info.target if isinstance(info.target, pathlib.Path) else path
    try:
        return sb3_load(
            source, env=env, device=device, custom_objects=objects, print_system_info=print_system_info,
            force_reset=force_reset, **kwargs,
        )  # fmt: skip
    except (EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise CheckpointError(
            f"{info.target} is damaged: {error}. Restore it from a backup or save the model again."
        ) from error
    except RuntimeError as error:
        if "PytorchStreamReader" in str(error) or "failed finding central directory" in str(error):
            raise CheckpointError(f"{info.target} is damaged: a weights member cannot be read ({error}).") from error
        raise


# ------------------------------------------------------------------------------------------------- policies
def save_policy(policy: Any, path) -> None:
    """``FlowPolicy.save``: the state dict and a JSON-only description of the constructor parameters, in one
    ``torch.save`` file that :func:`load_policy` reads with ``weights_only=True``."""
    entries = {}
    params = policy._get_constructor_parameters()
    for key, value in params.items():
        try:
            entries[key] = _encode_schedule(value) if key in SCHEDULE_KEYS and callable(value) else _encode(value)
        except _NotEncodable as error:
            raise TypeError(
                f"{type(policy).__name__}.save: the constructor parameter {key!r} cannot be stored as safe data ({error}). "
                "If it is your own class, register it with sb3_stepnft.common.persistence.allow_class(...)."
            ) from error
    description = {
        "format": SAFE_FORMAT,
        "sb3_stepnft_version": _package_version(),
        "policy": class_path(type(policy)),
        "policy_mro": [class_path(c) for c in type(policy).__mro__ if c is not object],
        "constructor": entries,
    }
    payload = {"state_dict": policy.state_dict(), POLICY_KEY: json.dumps(description)}
    atomic_save(lambda file: th.save(payload, file), path, default_suffix=None)


def load_policy(cls: type, path, device="auto", trust_checkpoint: bool = False):
    """``FlowPolicy.load``: rebuild the policy from the JSON description and the weights, unpickling nothing (files
    saved by SB3's ``BasePolicy.save`` -- earlier versions -- need ``trust_checkpoint=True``)."""
    import pickle

    from stable_baselines3.common.utils import get_device

    device = get_device(device)
    target = pathlib.Path(path) if isinstance(path, (str, os.PathLike)) else path
    if isinstance(target, pathlib.Path) and not target.exists():
        raise FileNotFoundError(f"No policy file at {target}")
    try:
        saved = th.load(target, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_checkpoint:
            raise UnsafeCheckpointError(
                f"{target} holds pickled Python objects (a policy file saved by SB3's BasePolicy.save or an earlier "
                "sb3-stepnft): loading it would run code from the file. If you trust where it comes from, pass "
                f"trust_checkpoint=True, then save it again with {cls.__name__}.save() to get a safe file. ({error})"
            ) from error
        warnings.warn(
            f"{target} is an old-format policy file: loading it by unpickling because trust_checkpoint=True. Save it "
            f"again with {cls.__name__}.save() to get a safe file.",
            UserWarning,
            stacklevel=3,
        )
        if isinstance(target, io.IOBase):
            target.seek(0)
        saved = th.load(target, map_location=device, weights_only=False)
        model = cls(**saved["data"])
        model.load_state_dict(saved["state_dict"])
        return model.to(device)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise CheckpointError(f"{target} is not a readable policy file (truncated or damaged?): {error}") from error
    if not isinstance(saved, dict) or POLICY_KEY not in saved or "state_dict" not in saved:
        raise CheckpointError(f"{target} is not a policy file saved by {cls.__name__}.save()")
    try:
        description = json.loads(saved[POLICY_KEY])
    except ValueError as error:
        raise CheckpointError(f"{target} is damaged: its policy description is not valid JSON ({error})") from error
    saved_path = description.get("policy", "?")
    if class_path(cls) not in description.get("policy_mro", []) and saved_path not in [class_path(c) for c in cls.__mro__]:
        saved_name = str(saved_path).rpartition(".")[2]
        raise CheckpointError(
            f"{target} holds a {saved_name} ({saved_path}), not a {cls.__name__}: load it with {saved_name}.load(...)"
        )
    params = {key: _decode(value) for key, value in description["constructor"].items()}
    model = cls(**params)
    model.load_state_dict(saved["state_dict"])
    return model.to(device)
