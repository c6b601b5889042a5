"""Prepare LIBERO non-interactively: its ``config.yaml`` and its scene/object assets (called by scripts/install_sim.sh).

    python scripts/setup_libero_assets.py                    # config + assets (LIBERO's own, else the offline bundle)
    python scripts/setup_libero_assets.py --bundle FILE      # another bundle (.tar.zst)
    python scripts/setup_libero_assets.py --config-only      # only the config

What it does:

1. Writes LIBERO's ``config.yaml`` (without it LIBERO's first import asks for its folders on stdin). With
   ``$LIBERO_CONFIG_PATH`` set: that folder's, when it is missing, when its folders do not exist (left by a deleted
   venv), or when this script wrote it for another LIBERO installation; a valid config written by someone else is left
   as it is. Otherwise, in a virtual environment: the venv's own ``<venv>/etc/libero/config.yaml`` (what
   ``sb3_stepnft.envs.libero`` reads there), and ``~/.libero``'s only when it is missing or invalid, for LIBERO's
   own scripts — so installing a second checkout (a fresh clone's ``make test``) does not repoint the first one's.
   Outside a venv: ``~/.libero``'s, as with ``$LIBERO_CONFIG_PATH``.
2. When LIBERO's own assets are missing (``<libero package>/assets``, ``~/.cache/libero/assets``), unpacks the offline
   bundle (``$SB3_STEPNFT_LIBERO_BUNDLE``, else ``<shared data>/libero-assets-*.tar.zst``; ``zstd`` and ``tar``) into
   LIBERO's package folder. The bundle (LIBERO commit 8f1084e) lacks 30 large visual files; they are listed in
   ``<assets>/.sb3_stepnft_bundle_missing.txt`` (docs/environments.md).

This is installation, so it lives outside the importable package: ``sb3_stepnft.envs.libero`` only finds the config and
the assets and raises an error naming this script when they are missing. The tests call :func:`install_libero_assets`
to unpack the bundle into a temporary folder when no assets are installed (tests/test_libero.py).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sb3_stepnft.envs.libero import (  # noqa: E402
    BUNDLE_MARKER,
    HOME_CONFIG_FILE,
    bundle_missing_files,
    libero_config_file,
    libero_package_dir,
    resolve_libero_assets,
    venv_config_dir,
)
from sb3_stepnft.envs.sim_utils import shared_data_dir  # noqa: E402

#: First line of a config written here: such a config is rewritten when it points at another LIBERO installation.
CONFIG_HEADER = "# written by scripts/setup_libero_assets.py\n"
#: What earlier versions (sb3_stepnft.envs.libero.ensure_libero_config) wrote: treated as ours.
_OLD_CONFIG_HEADER = "# written by sb3_stepnft.envs.libero.ensure_libero_config\n"


def ensure_libero_config() -> Path:
    """Write LIBERO's ``config.yaml`` so that ``import libero.libero`` never prompts on stdin (see the module docstring).

    :return: The config file ``sb3_stepnft.envs.libero`` reads (``libero_config_file()``).
    """
    local = venv_config_dir()
    if "LIBERO_CONFIG_PATH" in os.environ or local is None:
        return _write_config(libero_config_file(), replace_ours=True)
    # LIBERO's own default, for its scripts: only when missing or invalid
    _write_config(HOME_CONFIG_FILE.expanduser(), replace_ours=False)
    return _write_config(local / "config.yaml", replace_ours=True)


def _write_config(config_file: Path, replace_ours: bool) -> Path:
    """Write ``config_file`` for this LIBERO installation unless it is valid (and, with ``replace_ours``, not written
    here for another installation)."""
    import yaml

    root = libero_package_dir()
    config: dict[str, Any] = {}
    if config_file.exists():
        text = config_file.read_text()
        try:
            config = dict(yaml.safe_load(text) or {})
        except (yaml.YAMLError, TypeError, ValueError):
            config = {}
        valid = all(Path(str(config.get(key, ""))).is_dir() for key in ("benchmark_root", "bddl_files", "init_states"))
        ours_elsewhere = text.startswith((CONFIG_HEADER, _OLD_CONFIG_HEADER)) and config.get("benchmark_root") != str(root)
        if valid and not (replace_ours and ours_elsewhere):
            return config_file
    config_file.parent.mkdir(parents=True, exist_ok=True)
    new = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(config.get("datasets") or config_file.parent / "datasets"),
        "assets": str(root / "assets"),
    }
    tmp = config_file.with_name(f".{config_file.name}.{os.getpid()}.tmp")
    tmp.write_text(CONFIG_HEADER + yaml.safe_dump(new))
    os.replace(tmp, config_file)  # atomic: a parallel reader never sees a half-written file
    return config_file


def find_bundle() -> Path | None:
    """The offline asset bundle: ``$SB3_STEPNFT_LIBERO_BUNDLE``, else ``<shared data>/libero-assets-*.tar.zst``."""
    if os.environ.get("SB3_STEPNFT_LIBERO_BUNDLE"):
        return Path(os.environ["SB3_STEPNFT_LIBERO_BUNDLE"]).expanduser()
    candidates = sorted(shared_data_dir().glob("libero-assets-*.tar.zst"))
    return candidates[-1] if candidates else None


def install_libero_assets(bundle: str | os.PathLike | None = None, parent: str | os.PathLike | None = None) -> Path:
    """Unpack the offline bundle as ``<parent>/assets`` (default parent: LIBERO's package folder, where LIBERO looks).

    The bundle lacks 30 large visual files; they are listed in ``<assets>/.sb3_stepnft_bundle_missing.txt``. Collision
    geometry is complete, so physics and success checks are exact, but LIBERO cannot build a scene that references a
    missing visual: get LIBERO's complete assets for real use.

    :param bundle: The ``.tar.zst`` bundle (default: :func:`find_bundle`).
    :param parent: Folder to unpack into.
    :return: The assets folder.
    """
    bundle = Path(bundle) if bundle is not None else find_bundle()
    if bundle is None or not bundle.exists():
        raise FileNotFoundError(f"No LIBERO asset bundle found (looked for {shared_data_dir()}/libero-assets-*.tar.zst)")
    parent = Path(parent) if parent is not None else libero_package_dir()
    parent.mkdir(parents=True, exist_ok=True)
    try:
        decompress = subprocess.Popen(["zstd", "-dc", str(bundle)], stdout=subprocess.PIPE)
    except FileNotFoundError as error:
        raise FileNotFoundError("Unpacking the LIBERO bundle needs the zstd program: apt-get install zstd") from error
    untar = subprocess.run(["tar", "xf", "-", "-C", str(parent)], stdin=decompress.stdout, capture_output=True)
    decompress.stdout.close()
    if decompress.wait() != 0 or untar.returncode != 0:
        raise RuntimeError(f"Unpacking {bundle} into {parent} failed: {untar.stderr.decode()[-1000:]}")
    assets = parent / "assets"
    missing_list = bundle.with_name(bundle.name.replace(".tar.zst", ".MISSING.txt"))
    missing = missing_list.read_text().split() if missing_list.exists() else []
    (assets / BUNDLE_MARKER).write_text("".join(f"{line.removeprefix('assets/')}\n" for line in missing))
    return assets


def setup_libero(bundle: str | os.PathLike | None = None) -> Path | None:
    """Write the config and, when LIBERO's own assets are missing, unpack the offline bundle. Prints what it found.

    :return: The assets folder (None: no assets and no bundle).
    """
    config = ensure_libero_config()
    print(f"[libero] config: {config}")
    try:
        assets = resolve_libero_assets()
        origin = "offline bundle" if (assets / BUNDLE_MARKER).exists() else "LIBERO's own"
    except FileNotFoundError:
        if bundle is None and find_bundle() is None:
            print(f"[libero] WARNING: no assets and no bundle in {shared_data_dir()}; LIBERO envs cannot be built offline")
            return None
        assets, origin = install_libero_assets(bundle), "offline bundle, unpacked now"
    print(f"[libero] assets: {assets} ({origin})")
    missing = bundle_missing_files(assets)
    if missing:
        print(
            f"[libero] note: {len(missing)} visual files are absent from the bundle ({assets / BUNDLE_MARKER}); scenes "
            "that use them need LIBERO's complete assets (the tests fill them with placeholders)"
        )
    return assets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare LIBERO non-interactively: config.yaml and assets.")
    parser.add_argument("--bundle", default=None, help="asset bundle (.tar.zst); default: <shared data>/libero-assets-*")
    parser.add_argument("--config-only", action="store_true", help="only write the config")
    args = parser.parse_args(argv)
    if args.config_only:
        print(f"[libero] config: {ensure_libero_config()}")
    else:
        setup_libero(args.bundle)


if __name__ == "__main__":
    main()
