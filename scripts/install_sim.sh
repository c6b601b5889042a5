#!/usr/bin/env bash
# Install the simulators (ManiSkill3 and LIBERO) with their system packages into an existing virtual environment.
#
#   bash scripts/install_sim.sh [VENV]          # VENV defaults to ./venv; the core install (torch first) must be done
#   bash scripts/install_sim.sh --system-only   # only step 1 and the Vulkan check (e.g. in a Dockerfile), no venv
#
# Idempotent: a second run only checks (a few seconds). What it does, in order:
#   1. System packages (Debian/Ubuntu, as root or with sudo): Mesa >= 25 Vulkan (lavapipe) from bookworm-backports on
#      Debian 12 -- SAPIEN rejects Debian 12's stock Mesa 22.3.6 -- plus libvulkan1, vulkan-tools, EGL and OSMesa (for
#      LIBERO's offscreen rendering) and zstd; then checks that the Vulkan device has descriptorBindingPartiallyBound.
#   2. pip: the [maniskill] and [libero] extras with constraints.txt (torch==2.13.0, mujoco==3.9.0), then the `libero`
#      package itself with --no-deps (its full requirements pull robomimic -> torchvision -> torch 2.15 + CUDA).
#   3. The motion-planner overlay for offline ManiSkill demonstrations: mplib 0.1.1 segfaults with numpy 2, so the planner
#      runs in a small venv (numpy<2 only) layered over VENV; VENV itself keeps numpy 2.
#   4. LIBERO (scripts/setup_libero_assets.py): pre-seeds LIBERO's config.yaml (the venv's own <venv>/etc/libero, or
#      $LIBERO_CONFIG_PATH when set; ~/.libero only when missing or invalid) so the first import does not prompt, and
#      unpacks the asset bundle from ../shared/data when LIBERO's own are missing.
# Steps 3 and 4 are installation, kept out of the importable package: sb3_stepnft only finds the overlay venv, the
# LIBERO config and the assets, and its errors name this script when they are missing.
#
# Environment variables:
#   SB3_STEPNFT_SKIP_APT=1        skip step 1 (no root, or the machine is provisioned otherwise); the checks still run
#   SB3_STEPNFT_SIM_EXTRAS        extras to install, default "maniskill,libero"
#   SB3_STEPNFT_LIBERO_BUNDLE     the LIBERO asset bundle, default ../shared/data/libero-assets-8f1084e.tar.zst
#   SB3_STEPNFT_PLANNER_VENV      where the planner overlay venv goes, default VENV/sb3_stepnft_planner
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SYSTEM_ONLY=0
if [ "${1:-}" = --system-only ]; then SYSTEM_ONLY=1; shift; fi
VENV="${1:-venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PY="$VENV/bin/python"
EXTRAS="${SB3_STEPNFT_SIM_EXTRAS:-maniskill,libero}"
LIBERO_VERSION="0.1.1"
STAMP="$VENV/.sim_installed"
START=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[install_sim] %s\n' "$*"; }
die() { printf '[install_sim] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$SYSTEM_ONLY" = 0 ]; then
    [ -x "$PY" ] || die "no Python at $PY: create the virtual environment and install the package first (make install)."
    "$PY" -c "import torch, sb3_stepnft" 2>/dev/null \
        || die "$VENV lacks torch or sb3_stepnft: run the core install first (make install, or pip install torch==2.13.0 && pip install -e .)."
fi
want() { case ",$EXTRAS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# ------------------------------------------------------------------------------------------------ 1. system packages
APT_PACKAGES=(libvulkan1 vulkan-tools mesa-vulkan-drivers libegl1 libegl-mesa0 libgl1 libosmesa6 zstd)
MESA_MIN=25

pkg_version() { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | awk '/install ok installed/ {print $4}'; }

system_ok() {
    command -v dpkg-query >/dev/null || return 1
    local p
    for p in "${APT_PACKAGES[@]}"; do [ -n "$(pkg_version "$p")" ] || return 1; done
    dpkg --compare-versions "$(pkg_version mesa-vulkan-drivers)" ge "$MESA_MIN" || return 1
}

install_system() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "system packages missing (${APT_PACKAGES[*]}, Mesa >= $MESA_MIN) and not root: \
install them as root, or rerun with SB3_STEPNFT_SKIP_APT=1 on a provisioned machine."
        sudo="sudo"
    fi
    command -v apt-get >/dev/null || die "no apt-get: install Mesa >= $MESA_MIN Vulkan drivers (lavapipe), libvulkan1, \
vulkan-tools, EGL, OSMesa and zstd with your package manager, then rerun with SB3_STEPNFT_SKIP_APT=1."
    local codename="" target=()
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    if [ "$codename" = bookworm ]; then
        # Mesa 25 comes from bookworm-backports: add the suite as a copy of the machine's own Debian entry.
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            say "adding the bookworm-backports apt suite"
            if [ -f /etc/apt/sources.list.d/debian.sources ]; then
                awk -v RS= 'NR==1' /etc/apt/sources.list.d/debian.sources | grep -v '^#' \
                    | sed 's/^Suites:.*/Suites: bookworm-backports/' | $sudo tee /etc/apt/sources.list.d/backports.sources >/dev/null
            else
                echo "deb http://deb.debian.org/debian bookworm-backports main" \
                    | $sudo tee /etc/apt/sources.list.d/backports.list >/dev/null
            fi
        fi
        target=(-t bookworm-backports)
    fi
    say "apt-get update + install ${APT_PACKAGES[*]} ${target[*]}"
    $sudo apt-get update -qq
    # Mesa (Vulkan, EGL, GL, OSMesa) from one suite, so that its libraries match.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${target[@]}" \
        mesa-vulkan-drivers libegl-mesa0 libgl1-mesa-dri libglx-mesa0 libgbm1 libosmesa6 >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        libvulkan1 vulkan-tools libegl1 libgl1 zstd >/dev/null
    dpkg --compare-versions "$(pkg_version mesa-vulkan-drivers)" ge "$MESA_MIN" || die "mesa-vulkan-drivers is \
$(pkg_version mesa-vulkan-drivers) after the install; SAPIEN needs Mesa >= $MESA_MIN (lavapipe with descriptorBindingPartiallyBound). \
On Debian 12 it comes from bookworm-backports; elsewhere install a newer Mesa."
}

if want maniskill || want libero; then
    if system_ok; then
        say "system packages: ok (mesa-vulkan-drivers $(pkg_version mesa-vulkan-drivers))"
    elif [ "${SB3_STEPNFT_SKIP_APT:-0}" = 1 ]; then
        say "WARNING: system packages incomplete (${APT_PACKAGES[*]}, Mesa >= $MESA_MIN) and SB3_STEPNFT_SKIP_APT=1"
    else
        install_system
        say "system packages installed (mesa-vulkan-drivers $(pkg_version mesa-vulkan-drivers))"
    fi
fi
if want maniskill; then
    if command -v vulkaninfo >/dev/null; then
        vulkan_report="$(vulkaninfo 2>/dev/null || true)"
        grep -Eq 'descriptorBindingPartiallyBound[[:space:]]*=[[:space:]]*true' <<<"$vulkan_report" || die "no Vulkan device with \
descriptorBindingPartiallyBound (SAPIEN/ManiSkill cannot create any env): install Mesa >= $MESA_MIN mesa-vulkan-drivers \
(Debian 12: apt-get install -t bookworm-backports mesa-vulkan-drivers)."
        say "Vulkan: ok (descriptorBindingPartiallyBound = true)"
    else
        say "WARNING: vulkaninfo not found; cannot check the Vulkan device"
    fi
fi

if [ "$SYSTEM_ONLY" = 1 ]; then
    say "system packages done in $((SECONDS - START)) s"
    exit 0
fi

# ------------------------------------------------------------------------------------------------------- 2. pip
stamp_value() { cat "$ROOT/setup.py" "$ROOT/constraints.txt" "$ROOT/scripts/install_sim.sh" | sha256sum | cut -c1-16; echo "$EXTRAS"; }
import_code() {
    local code="import sb3_stepnft"
    if want maniskill; then code="$code; import mani_skill, sapien, mplib"; fi
    if want libero; then code="$code; import robosuite, bddl, mujoco, importlib.util as u; assert u.find_spec('libero')"; fi
    echo "$code"
}
imports_ok() { "$PY" -c "$(import_code)" >/dev/null 2>&1; }
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ] && imports_ok; then
    say "pip: up to date ($STAMP)"
else
    say "pip install -e .[$EXTRAS] -c constraints.txt"
    "$PY" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[$EXTRAS]"
    if want libero; then
        # --no-deps: libero's own requirements (robomimic, torchvision, wandb, ...) serve only libero.lifelong;
        # libero.libero (benchmark + envs) needs exactly what the [libero] extra lists.
        say "pip install --no-deps libero==$LIBERO_VERSION"
        "$PY" -m pip install -q -c "$ROOT/constraints.txt" --no-deps "libero==$LIBERO_VERSION"
        say "(pip's notes that libero's own requirements -- robomimic, torchvision, wandb, ... -- are missing are expected)"
    fi
    if "$PY" -m pip show -q torchvision >/dev/null 2>&1 && ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
        say "removing torchvision: it does not load with torch $("$PY" -c 'import torch; print(torch.__version__)') and breaks transformers"
        "$PY" -m pip uninstall -y -q torchvision
    fi
    "$PY" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
        || die "torch was replaced during the simulator install; check constraints.txt"
    if ! imports_ok; then
        "$PY" -c "$(import_code)" || true  # show the import error
        die "the simulator packages do not import in $VENV (error above)."
    fi
    stamp_value >"$STAMP"
fi

# ------------------------------------------------------------------------------------ 3. motion-planner overlay venv
# A venv holding only numpy<2 and opencv-python 4.11 (opencv 5 needs numpy 2), whose .pth file appends VENV's
# site-packages behind them: mani_skill, sapien, mplib and torch come from VENV. sb3_stepnft.envs.maniskill_demos only
# finds it (planner_venv_dir: $SB3_STEPNFT_PLANNER_VENV, else VENV/sb3_stepnft_planner).
if want maniskill; then
    PLANNER_VENV="$("$PY" -c "from sb3_stepnft.envs.maniskill_demos import planner_venv_dir; print(planner_venv_dir())")"
    PLANNER_PY="$PLANNER_VENV/bin/python"
    planner_ok() {
        [ -x "$PLANNER_PY" ] && "$PLANNER_PY" -c \
            "import numpy, mplib; assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__" >/dev/null 2>&1
    }
    if planner_ok; then
        say "motion-planner overlay venv: ok ($PLANNER_VENV)"
    else
        say "motion-planner overlay venv: creating $PLANNER_VENV (numpy<2 for mplib)"
        rm -rf "$PLANNER_VENV"
        BASE_PY="$("$PY" -c "import sys; print(getattr(sys, '_base_executable', sys.executable))")"
        "$BASE_PY" -m venv --without-pip "$PLANNER_VENV"
        "$PY" - "$PLANNER_VENV" <<'PYEOF'
import site, sys
from pathlib import Path

site_packages = Path(sys.argv[1]) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
main = [path for path in site.getsitepackages() if path.startswith(sys.prefix)]
(site_packages / "zz_sb3_stepnft_main_venv.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in main))
PYEOF
        # output shown only on failure: pip also reports the main venv's libero as lacking its (deliberately) absent deps
        pip_log="$("$PY" -m pip --python "$PLANNER_PY" install -q -c "$ROOT/constraints.txt" "numpy<2" \
            "opencv-python==4.11.0.86" 2>&1)" || { printf '%s\n' "$pip_log" >&2; die "pip install into $PLANNER_VENV failed (above)."; }
        if ! planner_ok; then
            "$PLANNER_PY" -c "import numpy, mplib; print('numpy', numpy.__version__)" || true  # show the error
            die "the motion-planner overlay venv $PLANNER_VENV cannot import numpy<2 and mplib (error above)."
        fi
        say "motion-planner overlay venv: created"
    fi
fi

# --------------------------------------------------------------------------------------- 4. LIBERO config and assets
if want libero; then
    "$PY" "$ROOT/scripts/setup_libero_assets.py"
fi

say "done in $((SECONDS - START)) s"
