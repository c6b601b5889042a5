import os

from setuptools import find_packages, setup

with open(os.path.join(os.path.dirname(__file__), "README.md"), encoding="utf-8") as f:
    long_description = f.read()

extras = {
    "vla": ["transformers>=5.4,<6"],
    # mani-skill pins mplib==0.1.1 itself; its motion planner needs numpy<2, which sb3_stepnft.envs.maniskill_demos
    # isolates in a small overlay venv instead of pinning it here (docs/environments.md).
    "maniskill": ["mani-skill==3.0.1", "h5py"],
    # What libero.libero (benchmark + envs) imports. LIBERO itself is installed with `pip install --no-deps
    # libero==0.1.1` (scripts/install_sim.sh): its full requirements pull robomimic -> torchvision -> a second torch.
    # mujoco>=3.10 breaks robosuite 1.4.0.
    "libero": ["robosuite==1.4.0", "bddl==1.0.1", "mujoco==3.9.0", "easydict", "termcolor", "pyyaml", "Pillow", "future"],
    "dev": ["pytest", "pytest-xdist", "tensorboard", "ruff", "black", "sb3-contrib>=2.9.2,<3"],
}
extras["all"] = sorted({req for reqs in extras.values() for req in reqs})

setup(
    name="sb3-stepnft",
    version="0.1.0",
    description="Online RL fine-tuning of flow-matching policies (pi-StepNFT, Flow-SDE PPO/GRPO) for Stable-Baselines3",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sb3_stepnft", "sb3_stepnft.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.3,<3",
        "stable-baselines3>=2.9.2,<3",
        "gymnasium>=1.0,<2",
        "numpy>=1.24,<3",
        "rich>=13",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "pyyaml>=5.4",  # the command line's --hyperparams files (RL Zoo style)
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["sb3-stepnft = sb3_stepnft.cli:main"]},
    author="sb3-stepnft developers",
    license="MIT",
    license_files=["LICENSE"],
    keywords=[
        "reinforcement-learning", "stable-baselines3", "flow-matching", "robotics", "vision-language-action",
        "fine-tuning", "pytorch", "gymnasium", "maniskill", "libero",
    ],  # fmt: skip
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Software Development :: Libraries :: Python Modules",
    ],
)
