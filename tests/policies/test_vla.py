"""FlowVLAPolicy: a frozen transformers VLM + trainable flow action expert, with every algorithm.

Tiny VLMs are built from config classes; nothing touches the network (conftest sets HF_HUB_OFFLINE=1).
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th

transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv  # noqa: E402

import sb3_stepnft  # noqa: E402
from sb3_stepnft import FlowGRPO, FlowPPO, StepNFT  # noqa: E402
from sb3_stepnft.common.policies import BaseFlowPolicy, FlowPolicy  # noqa: E402
from sb3_stepnft.envs.lang_reach import collect_demonstrations, make_lang_reach_env  # noqa: E402
from sb3_stepnft.policies import FlowVLAPolicy, MlpFlowPolicy  # noqa: E402
from sb3_stepnft.sft import pretrain  # noqa: E402
from sb3_stepnft.vla import VLAConfig, backbones, map_pi0_state_dict, pi0_config, pi0_policy_kwargs  # noqa: E402
from sb3_stepnft.vla.testing import tiny_paligemma_config, tiny_smolvlm_config  # noqa: E402

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.ByT5Tokenizer()


def lang_env(tokenizer, n_envs=2, seed=0, **kwargs):
    return DummyVecEnv(
        [lambda i=i: make_lang_reach_env(tokenizer, max_length=MAX_LENGTH, seed=seed + i, **kwargs) for i in range(n_envs)]
    )


def vla_kwargs(**overrides):
    kwargs = dict(vlm=tiny_paligemma_config(image_size=16, patch_size=8), expert_width=32)
    kwargs.update(overrides)
    return kwargs


def small(algo, env, **kwargs):
    kwargs.setdefault("policy_kwargs", vla_kwargs())
    kwargs.setdefault("n_steps", 8)
    kwargs.setdefault("batch_size", 8)
    kwargs.setdefault("n_epochs", 2)
    if algo is FlowGRPO:
        kwargs.setdefault("group_size", 2)
    return algo("VLAPolicy", env, seed=0, **kwargs)


def one_obs(env):
    obs = env.reset()
    return {key: value[:1] for key, value in obs.items()}


# ------------------------------------------------------------------------------------------- import and errors
def test_core_import_does_not_import_transformers():
    code = "import sys, sb3_stepnft, sb3_stepnft.policies, sb3_stepnft.vla; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_building_without_transformers_names_the_extra():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import numpy as np; from gymnasium import spaces\n"
        "from sb3_stepnft.policies import FlowVLAPolicy\n"
        "space = spaces.Dict(state=spaces.Box(-1, 1, (2,)))\n"
        "try:\n"
        "    FlowVLAPolicy(space, spaces.Box(-1, 1, (2,)), lambda _: 1e-4, vlm='x')\n"
        "except ImportError as e:\n"
        "    assert '[vla]' in str(e), e; print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("algo", [StepNFT, FlowPPO, FlowGRPO])
def test_alias_in_every_algorithm(algo):
    assert algo.policy_aliases["VLAPolicy"] is FlowVLAPolicy


def test_clear_errors(tokenizer):
    env = lang_env(tokenizer)
    with pytest.raises(ValueError, match="needs a backbone"):
        StepNFT("VLAPolicy", env, policy_kwargs=dict())
    with pytest.raises(ValueError, match="vocabulary"):
        StepNFT(
            "VLAPolicy", env, policy_kwargs=vla_kwargs(vlm=tiny_paligemma_config(image_size=16, patch_size=8, vocab_size=100))
        )
    with pytest.raises(ValueError, match="expert"):
        StepNFT("VLAPolicy", env, policy_kwargs=vla_kwargs(expert="moe"))
    with pytest.raises(KeyError, match="camera_keys"):
        StepNFT("VLAPolicy", env, policy_kwargs=vla_kwargs(camera_keys=["wrist"]))
    with pytest.raises(TypeError, match="Dict observations"):
        StepNFT("VLAPolicy", "Pendulum-v1", policy_kwargs=vla_kwargs())
    with pytest.raises(OSError, match="save_pretrained"):
        StepNFT("VLAPolicy", env, policy_kwargs=vla_kwargs(vlm="/nonexistent/vlm-dir"))


# ------------------------------------------------------------------------------------------ policy structure
def test_flow_policy_family_and_layering():
    """FlowVLAPolicy and the MLP family are siblings under BaseFlowPolicy; common/ never imports vla/."""
    assert issubclass(FlowVLAPolicy, BaseFlowPolicy) and not issubclass(FlowVLAPolicy, FlowPolicy)
    assert issubclass(MlpFlowPolicy, FlowPolicy) and issubclass(FlowPolicy, BaseFlowPolicy)
    for file in sorted(Path(sb3_stepnft.__file__).parent.joinpath("common").glob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [m for m in modules if m.startswith("sb3_stepnft.vla")], f"{file.name} imports vla/"
    assert not hasattr(sb3_stepnft.vla, "tiny_paligemma_config")  # test-only: sb3_stepnft.vla.testing


@pytest.mark.parametrize("family", ["paligemma-shared", "paligemma-cross", "smolvlm-shared", "smolvlm-cross"])
def test_feature_layout_is_derived_without_running_the_vlm(tokenizer, family, monkeypatch):
    name, expert = family.split("-")
    config = tiny_paligemma_config(16, 8) if name == "paligemma" else tiny_smolvlm_config(16, 4)
    env = lang_env(tokenizer, n_envs=2, cameras=("agentview", "wrist"))
    passes = []
    encode = backbones.BackboneAdapter.encode
    monkeypatch.setattr(backbones.BackboneAdapter, "encode", lambda self, *args: passes.append(1) or encode(self, *args))
    policy = FlowVLAPolicy(env.observation_space, env.action_space, lambda _: 1e-4, vlm=config, expert=expert, expert_width=32)
    assert passes == [] and policy.backbone_observations == 0  # building does not run the VLM
    with th.no_grad():
        feats = policy.encode({k: th.as_tensor(v) for k, v in env.reset().items()})
    assert passes == [1]
    fields = ("mask", "state", "pooled", "kv", "hidden")
    actual = [(f, tuple(getattr(feats, f).shape[1:])) for f in fields if getattr(feats, f) is not None]
    assert policy._layout == actual
    assert policy.features_to_flat(feats).shape == (2, policy.feature_size)


def test_vla_config_object_or_loose_keywords(tokenizer, tmp_path):
    env = lang_env(tokenizer)
    space, action_space, lr = env.observation_space, env.action_space, lambda _: 1e-4
    config = VLAConfig(vlm=tiny_paligemma_config(16, 8), expert="cross", expert_width=32)
    th.manual_seed(0)
    from_config = FlowVLAPolicy(space, action_space, lr, config=config)
    th.manual_seed(0)
    from_keywords = FlowVLAPolicy(space, action_space, lr, **config.to_kwargs())
    assert from_config.state_dict().keys() == from_keywords.state_dict().keys()
    assert all(th.equal(v, from_keywords.state_dict()[k]) for k, v in from_config.state_dict().items())
    resolved = from_config.config  # the values actually used, the VLM as its config
    assert resolved.camera_keys == ("image",) and resolved.state_dim == from_config.state_dim == space["state"].shape[0]
    assert resolved.chunk_size == 1 and resolved.action_dim == 2
    assert isinstance(resolved.vlm, transformers.PretrainedConfig)
    overridden = FlowVLAPolicy(space, action_space, lr, config=config, expert_width=16)  # loose fields win
    assert overridden.expert_width == overridden.config.expert_width == 16
    with pytest.raises(TypeError, match="expert_widht"):
        FlowVLAPolicy(space, action_space, lr, config=config, expert_widht=16)
    with pytest.raises(TypeError, match="config must be a VLAConfig"):
        FlowVLAPolicy(space, action_space, lr, tiny_paligemma_config(16, 8))
    with pytest.raises(ValueError, match="prefix_cache='buffer' needs freeze_vlm"):
        VLAConfig(vlm=config.vlm, prefix_cache="buffer", freeze_vlm=False)
    model = small(StepNFT, env, policy_kwargs=dict(config=config))
    obs = one_obs(env)
    model.save(tmp_path / "model.zip")
    loaded = StepNFT.load(tmp_path / "model.zip", env=env)
    assert loaded.policy.config.replace(vlm=None) == model.policy.config.replace(vlm=None)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_vla_sample_takes_injected_noise_and_generator(tokenizer):
    env = lang_env(tokenizer)
    policy = FlowVLAPolicy(env.observation_space, env.action_space, lambda _: 1e-4, **vla_kwargs(chunk_size=3))
    with th.no_grad():
        feats = policy.encode({k: th.as_tensor(v) for k, v in env.reset().items()})
        chains = [policy.sample(feats, "sde", generator=th.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
        th.testing.assert_close(chains[0].states, chains[1].states)
        assert not th.allclose(chains[0].sample, chains[2].sample)
        x_0 = th.randn(2, 3, 2)
        th.testing.assert_close(policy.sample(feats, x_0=x_0).states[0], x_0)
        th.testing.assert_close(policy.sample(feats, x_0=x_0).sample, policy.sample(feats, x_0=x_0.clone()).sample)
        with pytest.raises(ValueError, match="x_0 must have shape"):
            policy.sample(feats, x_0=th.zeros(2, 1, 2))


# ------------------------------------------------------------------------------------------ what is trained
def test_backbone_frozen_and_only_expert_trained(tokenizer):
    model = small(StepNFT, lang_env(tokenizer))
    policy = model.policy
    vlm_before = {k: v.clone() for k, v in policy.vlm.state_dict().items()}
    expert_before = {k: v.clone() for k, v in policy.expert.state_dict().items()}
    assert not any(p.requires_grad for p in policy.vlm.parameters())
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert trainable == {id(p) for p in policy.expert.parameters()}
    assert {id(p) for group in policy.optimizer.param_groups for p in group["params"]} == trainable
    assert all(name.startswith("expert.") for name in model.ema.shadow)
    policy.set_training_mode(True)
    assert policy.expert.training and not policy.vlm.training
    model.learn(32)
    assert all(th.equal(vlm_before[k], v) for k, v in policy.vlm.state_dict().items())
    assert any(not th.equal(expert_before[k], v) for k, v in policy.expert.state_dict().items())


def test_padded_instruction_tokens_do_not_change_the_velocity(tokenizer):
    model = small(StepNFT, lang_env(tokenizer))
    obs = {k: th.as_tensor(v) for k, v in one_obs(model.env).items()}
    pad = obs["instruction_mask"] == 0
    assert pad.any()
    changed = {k: v.clone() for k, v in obs.items()}
    changed["instruction_ids"][pad] = 7
    x_t, t = th.randn(1, 1, 2), th.tensor([0.5])
    with th.no_grad():
        v1 = model.policy.velocity(x_t, t, model.policy.encode(obs))
        v2 = model.policy.velocity(x_t, t, model.policy.encode(changed))
        changed["instruction_ids"][~pad] = 9  # the real tokens do matter
        v3 = model.policy.velocity(x_t, t, model.policy.encode(changed))
    th.testing.assert_close(v1, v2, rtol=0, atol=1e-6)
    assert not th.allclose(v1, v3)


# ------------------------------------------------------------------------------------------- backbone passes
@pytest.mark.parametrize("mode", ["buffer", "recompute"])
def test_one_backbone_pass_per_observation(tokenizer, mode):
    model = small(StepNFT, lang_env(tokenizer), num_denoise_steps=5, policy_kwargs=vla_kwargs(prefix_cache=mode))
    assert model.policy.cache_features is (mode == "buffer")
    labelled = []
    original = model.rollout_buffer.pop_labelled

    def pop():
        data = original()
        labelled.append(0 if data is None else len(data["episode_id"]))
        return data

    model.rollout_buffer.pop_labelled = pop
    model.learn(64)
    rollout_steps = model.num_timesteps // model.n_envs
    policy = model.policy
    if mode == "buffer":
        # K = 5 solver steps, n_epochs updates: still one prefix pass per observation, all at rollout time
        assert policy.backbone_observations == model.num_timesteps
        assert policy.backbone_calls == rollout_steps
    else:
        # recomputed under no_grad once per minibatch: one more pass per stored decision per epoch
        assert sum(labelled) > 0
        assert policy.backbone_observations == model.num_timesteps + model.n_epochs * sum(labelled)


def test_auto_cache_follows_the_memory_budget(tokenizer):
    env = lang_env(tokenizer)
    assert small(StepNFT, env).policy.cache_features  # a tiny prefix fits
    model = small(StepNFT, env, policy_kwargs=vla_kwargs(prefix_cache_budget=1000))
    assert not model.policy.cache_features
    with pytest.raises(ValueError, match="freeze_vlm"):
        small(StepNFT, env, policy_kwargs=vla_kwargs(prefix_cache="buffer", freeze_vlm=False))


def test_cached_and_recomputed_prefix_give_the_same_update(tokenizer):
    params = []
    for mode in ("buffer", "recompute"):
        model = small(StepNFT, lang_env(tokenizer), policy_kwargs=vla_kwargs(prefix_cache=mode))
        model.learn(48)
        params.append(th.cat([p.detach().flatten() for p in model.policy.trainable_parameters()]))
    th.testing.assert_close(params[0], params[1], rtol=1e-5, atol=1e-6)


def test_features_round_trip_through_the_flat_buffer_layout(tokenizer):
    for expert in ("shared", "cross"):
        model = small(StepNFT, lang_env(tokenizer), policy_kwargs=vla_kwargs(expert=expert))
        obs = {k: th.as_tensor(v) for k, v in model.env.reset().items()}
        with th.no_grad():
            feats = model.policy.encode(obs)
            flat = model.policy.features_to_flat(feats)
            assert flat.shape == (2, model.policy.feature_size)
            x_t, t = th.randn(2, 1, 2), th.tensor([0.3, 0.8])
            th.testing.assert_close(
                model.policy.velocity(x_t, t, feats), model.policy.velocity(x_t, t, model.policy.features_from_flat(flat))
            )


# --------------------------------------------------------------------------------------------- algorithms
@pytest.mark.parametrize("algo", [StepNFT, FlowPPO, FlowGRPO])
def test_every_algorithm_learns_saves_loads_predicts(tokenizer, algo, tmp_path):
    model = small(algo, lang_env(tokenizer))
    model.learn(32)
    obs = one_obs(model.env)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (1, 2)
    model.save(tmp_path / "model.zip")
    loaded = algo.load(tmp_path / "model.zip", env=lang_env(tokenizer))
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], action, atol=1e-6)
    for key, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[key]), key
    loaded.learn(16)


def test_padded_dims_enter_stepnft_errors_but_not_pi_rl_log_likelihoods(tokenizer):
    """ALGORITHM.md §3.3: StepNFT sums over all output dims; πRL log-likelihoods use real dims only."""
    grads = {}
    for algo in (StepNFT, FlowPPO):
        model = small(algo, lang_env(tokenizer), n_epochs=1, policy_kwargs=vla_kwargs(action_dim=4))
        head = model.policy.expert.action_out_proj.weight
        seen = []
        original_step = model.policy.optimizer.step

        def step(*args, _seen=seen, _head=head, _step=original_step, **kwargs):
            _seen.append(_head.grad.detach().clone())
            return _step(*args, **kwargs)

        model.policy.optimizer.step = step
        model.learn(32)
        grads[algo] = th.stack(seen).abs().sum(dim=(0, 2))  # per output dim
    assert (grads[StepNFT][2:] > 0).all()  # padded dims 2, 3 get gradient from the StepNFT errors
    assert (grads[FlowPPO][2:] == 0).all() and (grads[FlowPPO][:2] > 0).all()


def test_flow_ppo_critic_reads_the_detached_prefix(tokenizer):
    model = small(FlowPPO, lang_env(tokenizer))
    policy = model.policy
    names = {group["name"] for group in policy.optimizer.param_groups}
    assert names == {"actor", "critic"}
    obs = {k: th.as_tensor(v) for k, v in model.env.reset().items()}
    values = policy.predict_values(obs)
    assert values.shape == (2, 1)
    values.sum().backward()
    assert all(p.grad is None for p in policy.expert.parameters())


@pytest.mark.parametrize("family", ["paligemma-cross", "smolvlm-shared", "smolvlm-cross"])
def test_other_backbones_and_experts(tokenizer, family):
    name, expert = family.split("-")
    config = tiny_paligemma_config(16, 8) if name == "paligemma" else tiny_smolvlm_config(16, 4)
    model = small(StepNFT, lang_env(tokenizer), policy_kwargs=vla_kwargs(vlm=config, expert=expert))
    model.learn(16)
    assert model.policy.backbone_observations == model.num_timesteps


def test_two_cameras_in_subproc_vec_env(tokenizer):
    env = SubprocVecEnv(
        [
            lambda i=i: make_lang_reach_env(tokenizer, max_length=MAX_LENGTH, seed=i, cameras=("agentview", "wrist"))
            for i in range(2)
        ],
        start_method="fork",
    )
    try:
        model = small(StepNFT, env)
        assert model.policy.camera_keys == ("agentview", "wrist")
        model.learn(16)
        assert model.policy.backbone_observations == 16
    finally:
        env.close()


def test_pretrain_trains_the_expert_only(tokenizer):
    model = small(StepNFT, lang_env(tokenizer))
    demos, _ = collect_demonstrations(6, seed=0, tokenizer=tokenizer, max_length=MAX_LENGTH)
    vlm_before = {k: v.clone() for k, v in model.policy.vlm.state_dict().items()}
    metrics = pretrain(model, demos, epochs=5, seed=0)
    assert metrics["loss"] < metrics["initial_loss"]
    assert all(th.equal(vlm_before[k], v) for k, v in model.policy.vlm.state_dict().items())


# ------------------------------------------------------------------------------------------------- loading
def test_from_pretrained_directory_and_portable_checkpoint(tokenizer, tmp_path):
    vlm = transformers.AutoModelForImageTextToText.from_config(tiny_paligemma_config(16, 8))
    vlm.save_pretrained(tmp_path / "tiny-vlm")
    model = small(StepNFT, lang_env(tokenizer), policy_kwargs=vla_kwargs(vlm=str(tmp_path / "tiny-vlm")))
    for key, value in vlm.state_dict().items():
        assert th.equal(model.policy.vlm.state_dict()[key], value), key
    model.save(tmp_path / "model.zip")
    os.rename(tmp_path / "tiny-vlm", tmp_path / "moved")  # the checkpoint does not need the directory any more
    loaded = StepNFT.load(tmp_path / "model.zip")
    assert th.equal(loaded.policy.vlm.lm_head.weight, vlm.lm_head.weight)


def to_pi0_names(state_dict, prefix="model.", vision_model=True, old_layout=False):
    """Our names → the names of a LeRobot (or openpi / transformers-4) π0 checkpoint, written out by hand."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("vlm.model.vision_tower."):
            rest = key[len("vlm.model.vision_tower.") :]
            vt = "paligemma.vision_tower." if old_layout else "paligemma.model.vision_tower."
            new = prefix + "paligemma_with_expert." + vt + ("vision_model." if vision_model else "") + rest
        elif key.startswith("vlm.model.multi_modal_projector."):
            mm = "paligemma." if old_layout else "paligemma.model."
            new = prefix + "paligemma_with_expert." + mm + key[len("vlm.model.") :]
        elif key.startswith("vlm.model.language_model."):
            lm = "paligemma.language_model.model." if old_layout else "paligemma.model.language_model."
            new = prefix + "paligemma_with_expert." + lm + key[len("vlm.model.language_model.") :]
        elif key == "vlm.lm_head.weight":
            new = (
                prefix
                + "paligemma_with_expert."
                + ("paligemma.language_model.lm_head.weight" if old_layout else "paligemma.lm_head.weight")
            )
        elif key.startswith("expert.gemma."):
            new = prefix + "paligemma_with_expert.gemma_expert.model." + key[len("expert.gemma.") :]
        else:
            head = key[len("expert.") :]
            if old_layout:
                head = head.replace("action_time_mlp_", "time_mlp_")
            new = prefix + head
        out[new] = value.detach().clone().contiguous()
    return out


def write_pi0_checkpoint(path, state_dict, **naming):
    os.makedirs(path, exist_ok=True)
    tensors = to_pi0_names(state_dict, **naming)
    tensors.pop(next(k for k in tensors if k.endswith("lm_head.weight")))  # tied: often stored once
    tensors["model.paligemma_with_expert.gemma_expert.lm_head.weight"] = th.zeros(1, 32)  # ignored
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(type="pi0", chunk_size=1, max_state_dim=8, max_action_dim=4, n_action_steps=1), f)
    return tensors


@pytest.mark.parametrize("naming", [dict(), dict(vision_model=False), dict(prefix="", old_layout=True)])
def test_pi0_checkpoint_loader(tokenizer, tmp_path, naming):
    env = lang_env(tokenizer)
    source = small(StepNFT, env, policy_kwargs=vla_kwargs(action_dim=4, state_dim=8, expert_intermediate_size=48))
    write_pi0_checkpoint(tmp_path / "pi0", source.policy.state_dict(), **naming)
    kwargs = pi0_policy_kwargs(tmp_path / "pi0", vlm_config=tiny_paligemma_config(16, 8))
    assert (kwargs["expert_width"], kwargs["action_dim"], kwargs["state_dim"], kwargs["expert_intermediate_size"]) == (
        32,
        4,
        8,
        48,
    )
    config = pi0_config(tmp_path / "pi0", vlm_config=tiny_paligemma_config(16, 8), camera_keys=["image"])
    assert (config.expert_width, config.action_dim, config.chunk_size, config.camera_keys) == (32, 4, 1, ("image",))
    with_policy_args = pi0_policy_kwargs(tmp_path / "pi0", vlm_config=config.vlm, num_denoise_steps=4, state_key=None)
    assert with_policy_args["num_denoise_steps"] == 4 and with_policy_args["state_key"] is None
    model = StepNFT(FlowVLAPolicy, env, policy_kwargs=kwargs, n_steps=8, batch_size=8, seed=1)
    model.policy.load_pi0(tmp_path / "pi0")
    for key, value in source.policy.state_dict().items():
        assert th.equal(model.policy.state_dict()[key], value), key
    obs = one_obs(env)
    np.testing.assert_allclose(
        model.predict(obs, deterministic=True)[0], source.predict(obs, deterministic=True)[0], atol=1e-6
    )
    model.learn(16)  # θ_old starts from the loaded weights


def test_pi0_loader_errors(tokenizer, tmp_path):
    env = lang_env(tokenizer)
    source = small(StepNFT, env, policy_kwargs=vla_kwargs(action_dim=4, state_dim=8))
    tensors = to_pi0_names(source.policy.state_dict())
    with pytest.raises(ValueError, match="not π0 keys"):
        map_pi0_state_dict({**tensors, "model.value_head.weight": th.zeros(1)})
    with pytest.raises(ValueError, match="π0.5"):
        map_pi0_state_dict(
            {**tensors, "model.paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense.weight": th.zeros(1)}
        )
    kwargs = vla_kwargs(action_dim=4, state_dim=8)
    target = StepNFT(FlowVLAPolicy, env, policy_kwargs=kwargs, n_steps=8)
    with pytest.raises(FileNotFoundError, match="Download"):
        target.policy.load_pi0(tmp_path / "absent")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        target.policy.load_pi0(tmp_path / "broken")
    incomplete = {k: v for k, v in tensors.items() if "state_proj" not in k}
    (tmp_path / "incomplete").mkdir()
    save_file(incomplete, str(tmp_path / "incomplete" / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        target.policy.load_pi0(tmp_path / "incomplete")
    wrong = StepNFT(FlowVLAPolicy, env, policy_kwargs=vla_kwargs(action_dim=4, state_dim=8, expert_width=16), n_steps=8)
    write_pi0_checkpoint(tmp_path / "pi0", source.policy.state_dict())
    with pytest.raises(ValueError, match="shape"):
        wrong.policy.load_pi0(tmp_path / "pi0")
