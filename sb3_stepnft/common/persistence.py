"""Saving that never leaves a half-written file, and loading that names what is wrong with a checkpoint."""

import io
import os
import pathlib
import zipfile
from typing import Any


def atomic_save(save_fn, path: str | pathlib.Path | io.BufferedIOBase, **kwargs: Any) -> None:
    """Call ``save_fn(file, **kwargs)`` on a temporary file next to ``path``, then rename it into place.

    A crash or an exception during saving leaves any earlier file at ``path`` untouched and no partial file.
    SB3's convention of adding ``.zip`` to a path without suffix is kept. File objects are passed through.
    """
    if not isinstance(path, (str, os.PathLike)):
        save_fn(path, **kwargs)
        return
    target = pathlib.Path(path)
    if target.suffix == "":
        target = target.with_suffix(".zip")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            save_fn(file, **kwargs)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_checkpoint(path: Any, algorithm_name: str) -> None:
    """Raise a ValueError naming the problem when ``path`` is not a readable SB3 checkpoint of a flow algorithm."""
    if not isinstance(path, (str, os.PathLike)):
        return
    target = pathlib.Path(path)
    if not target.exists() and target.with_suffix(".zip").exists():
        target = target.with_suffix(".zip")
    if not target.exists():
        return  # SB3 raises its own FileNotFoundError
    if not zipfile.is_zipfile(target):
        raise ValueError(f"{target} is not a {algorithm_name} checkpoint: it is not a zip archive (corrupted or foreign file)")
    with zipfile.ZipFile(target) as archive:
        names = set(archive.namelist())
        if "data" not in names or "policy.pth" not in names:
            raise ValueError(
                f"{target} is not an SB3 checkpoint (it lacks 'data' or 'policy.pth'; found {sorted(names)[:6]}). "
                f"Save models with {algorithm_name}.save()."
            )
        data = archive.read("data").decode("utf-8", errors="replace")
    if "sb3_stepnft" not in data:
        raise ValueError(
            f"{target} was saved by another algorithm or policy family (no sb3_stepnft flow policy in it): "
            f"load it with the class that saved it, e.g. stable_baselines3.PPO.load(...), not {algorithm_name}.load()."
        )
