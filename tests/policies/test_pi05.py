"""π0.5 in FlowVLAPolicy: AdaRMS time conditioning, no state token, the prompt with the discretised state.

Tiny random-weight VLMs built from config classes; nothing is downloaded.
"""

import numpy as np
import pytest
import torch as th

transformers = pytest.importorskip("transformers")

from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from sb3_stepnft import FlowGRPO, FlowPPO, StepNFT  # noqa: E402
from sb3_stepnft.envs.lang_reach import make_lang_reach_env  # noqa: E402
from sb3_stepnft.vla import VLAConfig  # noqa: E402
from sb3_stepnft.vla.experts import AdaRMSNorm  # noqa: E402
from sb3_stepnft.vla.testing import tiny_paligemma_config  # noqa: E402

MAX_LENGTH = 32


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.ByT5Tokenizer()


def lang_env(tokenizer, n_envs=2):
    return DummyVecEnv([lambda i=i: make_lang_reach_env(tokenizer, max_length=MAX_LENGTH, seed=i) for i in range(n_envs)])


def pi05_kwargs(**fields):
    return dict(config=VLAConfig.pi05(vlm=tiny_paligemma_config(image_size=16, patch_size=8), expert_width=32, **fields))


def small(algo, env, **kwargs):
    kwargs.setdefault("policy_kwargs", pi05_kwargs())
    extra = dict(group_size=2) if algo is FlowGRPO else {}
    return algo("VLAPolicy", env, n_steps=8, batch_size=8, n_epochs=2, seed=0, **extra, **kwargs)


def test_pi05_heads_norms_and_shapes(tokenizer):
    env = lang_env(tokenizer)
    policy = small(StepNFT, env).policy
    names = set(policy.state_dict())
    assert policy.variant == "pi05" and policy.state_in_prompt
    assert "expert.time_mlp_in.weight" in names and "expert.time_mlp_out.weight" in names
    assert not any("state_proj" in n or "action_time_mlp" in n for n in names)
    assert "expert.gemma.layers.0.input_layernorm.dense.weight" in names
    assert "expert.gemma.layers.1.post_attention_layernorm.dense.bias" in names
    assert "expert.gemma.norm.dense.weight" in names and "expert.gemma.norm.weight" not in names
    assert policy.expert.time_mlp_in.weight.shape == (32, 32)  # π0's action_time_mlp_in is (32, 64)

    obs = {k: th.as_tensor(v) for k, v in env.reset().items()}
    feats = policy.encode(obs)
    x = th.randn(2, policy.chunk_size, policy.action_dim)
    v = policy.velocity(x, th.tensor([0.9, 0.3]), feats)
    assert v.shape == x.shape and th.isfinite(v).all()
    chain = policy.sample(feats, x_0=x)
    assert chain.sample.shape == x.shape
    # the state does not reach the π0.5 expert (it enters through the prompt)
    feats.state = feats.state + 5.0
    th.testing.assert_close(policy.velocity(x, th.tensor([0.9, 0.3]), feats), v)
    # the time enters only through the AdaRMS condition: zero-initialised dense weights (as LeRobot's) ignore it ...
    th.testing.assert_close(policy.velocity(x, th.tensor([0.2, 0.7]), feats), v)
    with th.no_grad():
        for name, param in policy.expert.named_parameters():
            if "dense.weight" in name:
                param.normal_(0.0, 0.1)
    # ... trained ones do
    assert not th.allclose(policy.velocity(x, th.tensor([0.2, 0.7]), feats), policy.velocity(x, th.tensor([0.9, 0.3]), feats))


def test_pi05_needs_the_shared_expert():
    with pytest.raises(ValueError, match="needs expert='shared'"):
        VLAConfig.pi05(expert="cross")
    with pytest.raises(ValueError, match="Unknown variant"):
        VLAConfig(variant="pi1")


def test_adarms_at_init_is_gemma_rmsnorm_with_an_open_gate():
    norm = AdaRMSNorm(16, cond_dim=8)
    x, cond = th.randn(3, 5, 16), th.randn(3, 8)
    plain = transformers.models.gemma.modeling_gemma.GemmaRMSNorm(16, eps=1e-6)
    th.nn.init.zeros_(plain.weight)  # Gemma's (1 + weight) form: weight 0 is the identity scale
    out, gate = norm(x, cond)
    th.testing.assert_close(out, plain(x))
    th.testing.assert_close(gate, th.ones(3, 1, 16))
    # scale, shift and gate follow dense(cond)
    with th.no_grad():
        norm.dense.bias.copy_(th.cat([th.full((16,), 1.0), th.full((16,), 0.5), th.full((16,), 2.0)]))
    out, gate = norm(x, cond)
    th.testing.assert_close(out, plain(x) * 2.0 + 0.5)
    th.testing.assert_close(gate, th.full((3, 1, 16), 2.0))


def test_pi05_trunk_at_init_equals_the_stock_gemma_expert(tokenizer):
    """With AdaRMS at its initial values (scale 0, shift 0, gate 1), the hand-written π0.5 layer loop must give what
    transformers' own Gemma decoder gives with the same attention/MLP weights and plain (weight-0) norms."""
    env = lang_env(tokenizer)
    pi05 = small(StepNFT, env).policy
    expert = pi05.expert
    stock = transformers.AutoModel.from_config(expert.gemma.config)
    own = {k: v for k, v in expert.gemma.state_dict().items() if "layernorm" not in k and not k.startswith("norm.")}
    missing, unexpected = stock.load_state_dict(own, strict=False)
    assert not unexpected and all("norm" in k or "embed" in k for k in missing)
    for name, param in stock.named_parameters():
        if "norm" in name:
            th.nn.init.zeros_(param)
    obs = {k: th.as_tensor(v) for k, v in env.reset().items()}
    feats = pi05.encode(obs)
    x, t = th.randn(2, pi05.chunk_size, pi05.action_dim), th.tensor([0.8, 0.1])
    with th.no_grad():
        ours = pi05.velocity(x, t, feats)
        suffix, _ = expert.suffix_embeddings(feats.state, x, t)  # action tokens; π0.5 attends among all of them
        prefix_valid = feats.mask.bool()
        n = suffix.shape[1]
        allowed = th.cat([prefix_valid[:, None, :].expand(-1, n, -1), th.ones(2, n, n, dtype=th.bool)], dim=2)
        mask = th.zeros(2, 1, n, allowed.shape[-1]).masked_fill(~allowed[:, None], th.finfo(th.float32).min)
        positions = prefix_valid.long().sum(1, keepdim=True) + th.arange(n)[None]
        kv = feats.kv
        cache = transformers.DynamicCache(ddp_cache_data=[(kv[:, i, 0], kv[:, i, 1]) for i in range(kv.shape[1])])
        out = stock(inputs_embeds=suffix, attention_mask=mask, position_ids=positions, use_cache=True, cache=cache)
        reference = expert.action_out_proj(out.last_hidden_state)
    th.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_language_embeddings_are_scaled_by_sqrt_width(tokenizer):
    policy = small(StepNFT, lang_env(tokenizer)).policy
    ids = th.tensor([[3, 7, 11]])
    table = policy.backbone.language_model.get_input_embeddings().weight
    th.testing.assert_close(policy.backbone.embed_text(ids), table[ids] * 64**0.5)


@pytest.mark.parametrize("algo", [StepNFT, FlowPPO, FlowGRPO])
def test_every_algorithm_trains_pi05_and_round_trips(tokenizer, algo, tmp_path):
    env = lang_env(tokenizer)
    model = small(algo, env)
    before = {k: v.clone() for k, v in model.policy.state_dict().items() if k.startswith("expert.")}
    model.learn(32)
    after = model.policy.state_dict()
    assert any(not th.equal(before[k], after[k]) for k in before if "dense" in k)  # the AdaRMS layers train
    assert not any(k.startswith("vlm.") and p.requires_grad for k, p in model.policy.named_parameters())
    model.save(tmp_path / "pi05.zip")
    loaded = algo.load(tmp_path / "pi05.zip", env=env)
    assert loaded.policy.variant == "pi05"
    obs = env.reset()
    th.manual_seed(0)
    a, _ = model.predict(obs, deterministic=True)
    th.manual_seed(0)
    b, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_pi05_prompt_writes_the_discretised_state(tokenizer):
    from sb3_stepnft.envs.lang_reach import LangReachEnv
    from sb3_stepnft.vla.prompt import Pi05Prompt, discretize_state, pi05_prompt

    # openpi's bins: [-1, 1] → 0 .. 255
    assert discretize_state(np.array([-1.0, 0.0, 0.999, 1.0])).tolist() == [0, 128, 255, 255]
    stats = dict(mode="quantiles", state=dict(q01=[-2.0, -2.0], q99=[2.0, 2.0]), actions=dict(q01=[0.0], q99=[1.0]))
    env = Pi05Prompt(LangReachEnv(), tokenizer, max_length=120, norm_stats=stats)
    obs, info = env.reset(seed=0)

    def normalised(state):  # the quantile normalisation of [-2, 2] on the two dims the statistics cover
        return np.concatenate([np.asarray(state[:2]) / 2.0, state[2:]])

    bins = discretize_state(normalised(obs["state"]))
    prompt = pi05_prompt(info["instruction"], bins)
    assert prompt.startswith("Task: ") and ", State: " in prompt and prompt.endswith(";\nAction: ")
    ids = obs["instruction_ids"][obs["instruction_mask"].astype(bool)]
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt
    obs, *_ = env.step(env.action_space.sample())
    assert tokenizer.decode(obs["instruction_ids"][obs["instruction_mask"].astype(bool)], skip_special_tokens=True) == (
        pi05_prompt(info["instruction"], discretize_state(normalised(obs["state"])))
    )  # the state is re-read every step
    # pi05_libero-style checkpoints: no state in the prompt
    plain = Pi05Prompt(LangReachEnv(), tokenizer, max_length=120, state_in_prompt=False)
    obs, info = plain.reset(seed=0)
    decoded = tokenizer.decode(obs["instruction_ids"][obs["instruction_mask"].astype(bool)], skip_special_tokens=True)
    assert decoded == f"Task: {info['instruction'].strip()};\nAction: "


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_expert_gradient_checkpointing_gives_the_same_gradients(tokenizer, variant):
    env = lang_env(tokenizer)
    config = VLAConfig(vlm=tiny_paligemma_config(image_size=16, patch_size=8), expert_width=32, variant=variant)
    policies = [
        small(StepNFT, env, policy_kwargs=dict(config=config.replace(expert_gradient_checkpointing=flag))).policy
        for flag in (False, True)
    ]
    policies[1].load_state_dict(policies[0].state_dict())
    obs = {k: th.as_tensor(v) for k, v in env.reset().items()}
    x, t = th.randn(2, policies[0].chunk_size, policies[0].action_dim), th.tensor([0.7, 0.2])
    grads, saved = [], []
    for policy in policies:
        feats = policy.encode(obs)
        tensors = []

        def pack(tensor, tensors=tensors):
            tensors.append(tensor.numel())
            return tensor

        with th.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = policy.velocity(x, t, feats).square().sum()
        loss.backward()
        grads.append(th.cat([p.grad.flatten() for p in policy.expert.parameters() if p.grad is not None]))
        saved.append(sum(tensors))
    th.testing.assert_close(grads[1], grads[0])
    assert saved[1] < saved[0] / 2  # only the layer inputs are kept
