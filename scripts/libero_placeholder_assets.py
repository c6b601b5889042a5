"""A copy of LIBERO's assets whose files missing from the offline bundle are small placeholders (tests, state-only runs).

    python scripts/libero_placeholder_assets.py DEST            # DEST/assets: symlinks to the installed assets + placeholders

The offline bundle (../shared/data, LIBERO commit 8f1084e) lacks 30 large visual files (background meshes, the
black-bowl and basket visuals, some 4K textures), and every LIBERO scene references at least one of them. This builds a
copy of the assets (real folders, symlinked files; the installed assets are not modified) in which those files are
placeholders: a 4 cm box mesh (.msh/.obj), a grey 64x64 texture (.png) or an empty .zip. Collision geometry is
untouched, so physics and success checks are exact; images show boxes where those objects should be, so image-based
numbers from such a copy must say that the visuals were placeholders. With LIBERO's complete assets there is nothing to
fill and the installed folder is returned as it is.
"""

import argparse
import os
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sb3_stepnft.envs.libero import BUNDLE_MARKER, bundle_missing_files, resolve_libero_assets  # noqa: E402


def _box() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    half = 0.02
    vertices = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], np.float32)
    faces = np.array(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4],
         [1, 5, 7], [1, 7, 3]], np.int32,
    )  # fmt: skip
    texcoords = np.array([[i % 2, (i // 2) % 2] for i in range(8)], np.float32)
    return vertices, faces, texcoords


def write_placeholder(path: Path) -> None:
    """A stand-in for a missing visual asset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vertices, faces, texcoords = _box()
    if path.suffix == ".msh":  # MuJoCo's binary mesh: counts, then vertices, (no normals), texcoords, faces
        path.write_bytes(
            struct.pack("4i", len(vertices), 0, len(texcoords), len(faces))
            + vertices.tobytes()
            + texcoords.tobytes()
            + faces.tobytes()
        )
    elif path.suffix == ".obj":
        lines = [f"v {x} {y} {z}" for x, y, z in vertices] + [f"vt {u} {v}" for u, v in texcoords]
        lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".png":
        from PIL import Image

        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    elif path.suffix == ".zip":
        zipfile.ZipFile(path, "w").close()
    else:
        raise ValueError(f"no placeholder for {path}")


def placeholder_assets(dest: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """``dest/assets``: ``source`` (default: the installed assets) with the bundle's missing files as placeholders;
    reused when it exists and is complete. Returns ``source`` itself when nothing is missing."""
    source = Path(source) if source is not None else resolve_libero_assets()
    missing = bundle_missing_files(source)
    if not missing:
        return source  # LIBERO's own complete assets: nothing to fill
    overlay = Path(dest) / "assets"
    if overlay.exists() and not bundle_missing_files(overlay):
        return overlay
    if overlay.exists():
        shutil.rmtree(overlay)
    shutil.copytree(source, overlay, symlinks=False, copy_function=os.symlink)  # real folders, symlinked files
    for relative in missing:
        write_placeholder(overlay / relative)
    (overlay / BUNDLE_MARKER).unlink()
    (overlay / BUNDLE_MARKER).write_text("".join(f"{m}\n" for m in missing))  # still a bundle, now complete
    assert not bundle_missing_files(overlay)
    return overlay


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dest", help="folder in which DEST/assets is built")
    parser.add_argument("--source", default=None, help="assets folder to copy (default: the installed assets)")
    print(placeholder_assets(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
