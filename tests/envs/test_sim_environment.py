"""The full environment works as one: after the simulators (ManiSkill3, LIBERO) are imported, torch is still the CPU
build installed first and transformers' model classes still import and run.

LIBERO's own requirements would bring robomimic -> torchvision, whose PyPI build does not load with torch 2.13 CPU and
then breaks ``from transformers import ...`` (docs/environments.md); scripts/install_sim.sh installs LIBERO with
``--no-deps`` and constraints.txt keeps torch. The check runs in a fresh interpreter, so the import order is real.
Skipped without transformers (the [vla] extra); each simulator is imported when it is installed.
"""

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.sim

CHECK = """
import torch
{simulators}
from transformers import ByT5Tokenizer, GemmaConfig, GemmaModel, PaliGemmaForConditionalGeneration, SiglipVisionModel

assert torch.__version__.startswith("2.13.0"), torch.__version__
config = GemmaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=8)
ids = torch.tensor([ByT5Tokenizer()("open the drawer")["input_ids"]]) % config.vocab_size
assert GemmaModel(config)(ids).last_hidden_state.shape == (1, ids.shape[1], 16)
print("imported:", {names!r})
"""

SIMULATOR_IMPORTS = {
    "mani_skill": "import mani_skill.envs, sapien, mplib",
    # the config check first: without the config written by scripts/setup_libero_assets.py, LIBERO's first import
    # asks for its folders on stdin; the check fails with an error naming that script instead
    "libero": "from sb3_stepnft.envs.libero import check_libero_config; check_libero_config()\n"
    "import robosuite, mujoco, libero.libero.envs, libero.libero.benchmark",
}


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers (the [vla] extra)")
def test_transformers_model_classes_import_after_the_simulators():
    present = [name for name in SIMULATOR_IMPORTS if importlib.util.find_spec(name) is not None]
    code = CHECK.format(simulators="\n".join(SIMULATOR_IMPORTS[name] for name in present), names=present)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600
    )
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert f"imported: {present!r}" in result.stdout


def test_torchvision_absent_or_loadable():
    """A torchvision that does not load with this torch breaks transformers' vision models (see the module docstring)."""
    if importlib.util.find_spec("torchvision") is None:
        return
    result = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"torchvision is installed but does not load: {result.stderr[-2000:]}"
