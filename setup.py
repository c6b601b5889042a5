import os

from setuptools import find_packages, setup

with open(os.path.join(os.path.dirname(__file__), "README.md"), encoding="utf-8") as f:
    long_description = f.read()

extras = {
    "vla": ["transformers>=5.0,<6"],
    "maniskill": ["mani-skill>=3.0.1,<3.1"],
    "libero": ["robosuite==1.4.0", "bddl", "mujoco==3.9.0"],
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
    ],
    extras_require=extras,
    license="MIT",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
