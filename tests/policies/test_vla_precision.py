"""Mixed precision of FlowVLAPolicy: a bf16 frozen VLM (``vlm_dtype``) and bf16 autocast of the expert
(``expert_autocast``), both on the CPU, against the float32 model with the same weights.

Documented tolerances (docs/vla.md, "Mixed precision"), on velocities of magnitude about 1 (the tiny test models and
LeRobot's fixtures): a bf16 VLM changes them by at most ``VLM_BF16_ATOL`` (measured: 1.5e-3 on the tiny models, 8.8e-3
on LeRobot's π0 fixture), a bf16 VLM plus the expert under bf16 autocast by at most ``AUTOCAST_ATOL`` (measured:
6.7e-3, 1.4e-2 on the π0 fixture) and the expert's gradients by a relative ``AUTOCAST_GRAD_RTOL`` (measured: 1.1e-2).
"""

from pathlib import Path

import numpy as np
import pytest
import torch as th

transformers = pytest.importorskip("transformers")

from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from sb3_stepnft import StepNFT  # noqa: E402
from sb3_stepnft.envs.lang_reach import make_lang_reach_env  # noqa: E402
from sb3_stepnft.policies import FlowVLAPolicy  # noqa: E402
from sb3_stepnft.vla import VLAConfig  # noqa: E402
from sb3_stepnft.vla.testing import tiny_paligemma_config, tiny_smolvlm_config  # noqa: E402
from tests.helpers import lerobot_fixture_spaces, lerobot_fixture_vlm  # noqa: E402

VLM_BF16_ATOL = 2e-2
AUTOCAST_ATOL = 4e-2
AUTOCAST_GRAD_RTOL = 5e-2
DATA = Path(__file__).resolve().parents[1] / "data"
FAMILIES = {
    "pi0": dict(vlm="paligemma"),
    "pi05": dict(vlm="paligemma", variant="pi05"),
    "pi0-cross": dict(vlm="paligemma", expert="cross"),
    "smolvlm": dict(vlm="smolvlm"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.ByT5Tokenizer()


def lang_env(tokenizer, n_envs=3):
    return DummyVecEnv([lambda i=i: make_lang_reach_env(tokenizer, max_length=32, seed=i) for i in range(n_envs)])


def family_kwargs(family, **fields):
    fields = {**FAMILIES[family], **fields}
    vlm = fields.pop("vlm")
    fields["vlm"] = tiny_paligemma_config(16, 8) if vlm == "paligemma" else tiny_smolvlm_config(16, 4)
    return dict(expert_width=32, **fields)


def policy_pair(env, family, **precision):
    """A float32 policy and one with the given precision fields holding the same weights."""
    th.manual_seed(0)
    reference = FlowVLAPolicy(env.observation_space, env.action_space, lambda _: 1e-4, **family_kwargs(family))
    mixed = FlowVLAPolicy(env.observation_space, env.action_space, lambda _: 1e-4, **family_kwargs(family, **precision))
    mixed.load_state_dict(reference.state_dict())  # float32 weights, cast to bf16 where the VLM is
    return reference, mixed


def parameter_bytes(module):
    return sum(p.numel() * p.element_size() for p in module.parameters())


def obs_of(env):
    return {k: th.as_tensor(v) for k, v in env.reset().items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bf16_vlm_matches_float32(tokenizer, family):
    env = lang_env(tokenizer)
    reference, mixed = policy_pair(env, family, vlm_dtype="bfloat16")
    assert mixed.vlm_dtype is th.bfloat16 and reference.vlm_dtype is th.float32  # the resolved config says which
    assert {p.dtype for p in mixed.vlm.parameters()} == {th.bfloat16}
    assert {p.dtype for p in mixed.expert.parameters()} == {th.float32}  # master weights
    assert parameter_bytes(mixed.vlm) * 2 == parameter_bytes(reference.vlm)
    assert parameter_bytes(mixed.expert) == parameter_bytes(reference.expert)
    obs = obs_of(env)
    x_t, t, x_0 = th.randn(3, 1, 2), th.tensor([0.1, 0.5, 0.9]), th.randn(3, 1, 2)
    with th.no_grad():
        feats, reference_feats = mixed.encode(obs), reference.encode(obs)
        prefix = "kv" if mixed.expert_kind == "shared" else "hidden"
        assert getattr(feats, prefix).dtype == feats.pooled.dtype == th.float32  # cast at the boundary
        assert not th.equal(getattr(feats, prefix), getattr(reference_feats, prefix))  # really computed in bf16
        velocity = mixed.velocity(x_t, t, feats)
        assert velocity.dtype == th.float32
        th.testing.assert_close(velocity, reference.velocity(x_t, t, reference_feats), atol=VLM_BF16_ATOL, rtol=0)
        sample = mixed.sample(feats, "ode", x_0=x_0).sample
        th.testing.assert_close(sample, reference.sample(reference_feats, "ode", x_0=x_0).sample, atol=VLM_BF16_ATOL, rtol=0)


@pytest.mark.parametrize("family", ["pi0", "pi05", "pi0-cross"])
def test_expert_autocast_matches_float32_with_float32_gradients(tokenizer, family):
    env = lang_env(tokenizer)
    reference, mixed = policy_pair(env, family, vlm_dtype="bfloat16", expert_autocast=True)
    obs = obs_of(env)
    x_t, t = th.randn(3, 1, 2), th.tensor([0.1, 0.5, 0.9])
    velocities = [policy.velocity(x_t, t, policy.encode(obs)) for policy in (reference, mixed)]
    assert velocities[1].dtype == th.float32
    th.testing.assert_close(velocities[1], velocities[0], atol=AUTOCAST_ATOL, rtol=0)
    with th.no_grad():  # autocast is really on: the same bf16 VLM without it gives other numbers
        feats = mixed.encode(obs)
        mixed.config = mixed.config.replace(expert_autocast=False)
        assert not th.allclose(mixed.velocity(x_t, t, feats), velocities[1], atol=1e-6, rtol=0)
        mixed.config = mixed.config.replace(expert_autocast=True)
    grads = []
    for policy, velocity in zip((reference, mixed), velocities):
        velocity.square().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == th.float32 for p in policy.expert.parameters())
        grads.append(th.cat([p.grad.flatten() for p in policy.expert.parameters()]))
    assert th.isfinite(grads[1]).all()
    assert (grads[1] - grads[0]).norm() <= AUTOCAST_GRAD_RTOL * grads[0].norm()
    assert all(p.grad is None for p in mixed.vlm.parameters())


@pytest.mark.parametrize("expert_autocast", [False, True])
def test_stepnft_learns_saves_and_loads_a_bf16_vlm(tokenizer, tmp_path, expert_autocast):
    env = lang_env(tokenizer, n_envs=2)
    model = StepNFT(
        "VLAPolicy",
        env,
        policy_kwargs=family_kwargs("pi0", vlm_dtype=th.bfloat16, expert_autocast=expert_autocast),
        n_steps=8,
        batch_size=8,
        n_epochs=2,
        seed=0,
    )
    policy = model.policy
    vlm_before = {k: v.clone() for k, v in policy.vlm.state_dict().items()}
    expert_before = {k: v.clone() for k, v in policy.expert.state_dict().items()}
    grads = []
    for p in policy.expert.parameters():
        p.register_post_accumulate_grad_hook(lambda p: grads.append((p.grad.dtype, bool(th.isfinite(p.grad).all()))))
    model.learn(32)
    assert grads and all(dtype == th.float32 and finite for dtype, finite in grads)
    states = [s for s in policy.optimizer.state.values() if s]
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == th.float32 for s in states)
    assert all(th.equal(vlm_before[k], v) for k, v in policy.vlm.state_dict().items())
    assert any(not th.equal(expert_before[k], v) for k, v in policy.expert.state_dict().items())
    assert all(th.isfinite(p).all() for p in policy.expert.parameters())

    obs = {key: value[:1] for key, value in env.reset().items()}
    action = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "model.zip")
    loaded = StepNFT.load(tmp_path / "model.zip", env=lang_env(tokenizer, n_envs=2))
    assert loaded.policy.vlm_dtype is th.bfloat16 and loaded.policy.expert_autocast is expert_autocast
    assert {p.dtype for p in loaded.policy.vlm.parameters()} == {th.bfloat16}
    assert {p.dtype for p in loaded.policy.expert.parameters()} == {th.float32}
    for key, value in policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[key]), key
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], action, atol=1e-6)
    loaded.learn(32)


@pytest.mark.parametrize("expert_autocast", [False, True])
@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_openpi_checkpoint_loads_into_a_bf16_vlm(variant, expert_autocast):
    """LeRobot's fixtures (tests/data, float32) loaded with ``vlm_dtype="bfloat16"``: the VLM's weights are the
    checkpoint's rounded to bf16, the expert's are exact, and LeRobot's float32 velocities are met to bf16 accuracy."""
    from safetensors.torch import load_file

    io = th.load(DATA / f"lerobot_{variant}" / "io.pt")
    observation_space, action_space = lerobot_fixture_spaces(io)
    vlm = lerobot_fixture_vlm()
    loader = FlowVLAPolicy.from_pi0 if variant == "pi0" else FlowVLAPolicy.from_pi05
    with pytest.warns(UserWarning, match="No normalisation statistics"):
        policy = loader(
            DATA / f"lerobot_{variant}",
            observation_space,
            action_space,
            vlm_config=vlm,
            num_denoise_steps=io["num_steps"],
            vlm_dtype="bfloat16",
            expert_autocast=expert_autocast,
        )
    assert policy.variant == variant
    assert {p.dtype for p in policy.vlm.parameters()} == {th.bfloat16}
    assert {p.dtype for p in policy.expert.parameters()} == {th.float32}
    checkpoint = load_file(DATA / f"lerobot_{variant}" / "model.safetensors")
    head = "model.action_in_proj.weight"
    assert th.equal(policy.expert.action_in_proj.weight, checkpoint[head].float())
    embed = "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    assert th.equal(policy.vlm.model.language_model.embed_tokens.weight, checkpoint[embed].to(th.bfloat16))
    obs = dict(image=io["images"], state=io["state"], instruction_ids=io["tokens"], instruction_mask=io["masks"])
    tolerance = AUTOCAST_ATOL if expert_autocast else VLM_BF16_ATOL
    with th.no_grad():
        feats = policy.encode(obs)
        for x_t, t, expected in zip(io["x_t"], io["times"], io["velocities"]):
            th.testing.assert_close(policy.velocity(x_t, t, feats), expected, atol=tolerance, rtol=0)
        chain = policy.sample(feats, "ode", x_0=io["noise"])
    th.testing.assert_close(chain.sample, io["sample"], atol=tolerance, rtol=0)


def test_vlm_dtype_names_and_errors():
    vlm = tiny_paligemma_config(16, 8)
    for name in ("bfloat16", "torch.bfloat16", "bf16", th.bfloat16):
        assert VLAConfig(vlm=vlm, vlm_dtype=name).vlm_dtype is th.bfloat16
    assert VLAConfig(vlm=vlm, vlm_dtype="float16").vlm_dtype is th.float16
    assert VLAConfig(vlm=vlm, vlm_dtype="float32").vlm_dtype is th.float32
    assert VLAConfig(vlm=vlm).vlm_dtype is None
    with pytest.raises(ValueError, match=r"vlm_dtype must be None or one of \['float32', 'bfloat16', 'float16'\]"):
        VLAConfig(vlm=vlm, vlm_dtype="int8")
    with pytest.raises(ValueError, match="vlm_dtype"):
        VLAConfig(vlm=vlm, vlm_dtype=th.float64)
    with pytest.raises(ValueError, match="needs freeze_vlm=True"):
        VLAConfig(vlm=vlm, vlm_dtype="bfloat16", freeze_vlm=False)
    VLAConfig(vlm=vlm, vlm_dtype="float32", freeze_vlm=False)  # a float32 VLM may be trained


def test_float16_vlm_runs_on_the_cpu(tokenizer):
    """float16 storage works on the CPU with this torch too (bf16 is the documented choice: wider range)."""
    env = lang_env(tokenizer)
    reference, mixed = policy_pair(env, "pi0", vlm_dtype="float16")
    assert {p.dtype for p in mixed.vlm.parameters()} == {th.float16}
    obs, x_t, t = obs_of(env), th.randn(3, 1, 2), th.tensor([0.1, 0.5, 0.9])
    with th.no_grad():
        th.testing.assert_close(
            mixed.velocity(x_t, t, mixed.encode(obs)),
            reference.velocity(x_t, t, reference.encode(obs)),
            atol=VLM_BF16_ATOL,
            rtol=0,
        )
