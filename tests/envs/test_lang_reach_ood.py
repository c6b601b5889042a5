"""LangReach's variation parameters (backgrounds, pixel noise, target shades, start region) and OOD_VARIATIONS."""

import numpy as np
import pytest

from sb3_stepnft.envs.lang_reach import (
    OOD_VARIATIONS,
    TARGET_COLORS,
    TARGET_NAMES,
    LangReachEnv,
    ood_env_kwargs,
)


def reset(seed=3, **kwargs):
    env = LangReachEnv(**kwargs)
    obs, info = env.reset(seed=seed)
    return env, obs, info


def test_defaults_keep_the_rng_stream_and_a_black_background():
    """The default env draws target, template, start and nothing else: the same stream as before the variations."""
    for seed in range(5):
        env, obs, info = reset(seed)
        rng = np.random.default_rng(seed)
        target = TARGET_NAMES[int(rng.integers(4))]
        rng.integers(1)  # the template
        assert info["target"] == target
        np.testing.assert_array_equal(env._position, rng.uniform(-0.2, 0.2, size=2))
        assert tuple(obs["image"][:, 0, 0]) == (0, 0, 0)


def test_background_changes_only_background_pixels():
    _, plain, info = reset()
    env, colored, info2 = reset(background_colors=[(10, 20, 30)])
    assert info == info2
    np.testing.assert_array_equal(plain["state"], colored["state"])
    background = (plain["image"] == 0).all(axis=0)
    assert background.mean() > 0.5
    np.testing.assert_array_equal(colored["image"][:, ~background], plain["image"][:, ~background])
    assert (colored["image"][:, background] == np.array([10, 20, 30])[:, None]).all()
    # several colours: one per episode, all of them drawn
    env = LangReachEnv(background_colors=[(10, 20, 30), (40, 50, 60)], seed=0)
    seen = {tuple(env.reset()[0]["image"][:, 0, 0]) for _ in range(30)}
    assert seen == {(10, 20, 30), (40, 50, 60)}


def test_image_noise_changes_pixels_not_the_episode():
    gray = dict(background_colors=[(128, 128, 128)])
    _, clean, info = reset(**gray)
    env, noisy, info2 = reset(image_noise_std=10.0, **gray)
    assert info == info2
    np.testing.assert_array_equal(clean["state"], noisy["state"])
    diff = noisy["image"].astype(float) - clean["image"].astype(float)
    background = (clean["image"] == 128).all(axis=0)
    assert abs(diff[:, background].mean()) < 1.5 and 8.0 < diff[:, background].std() < 12.0
    after = env.step(np.zeros(2))[0]["image"]  # fresh noise each frame
    assert not np.array_equal(after, noisy["image"])


def test_target_shades_recolour_the_target_only():
    _, plain, info = reset()
    env, shaded, info2 = reset(target_shades={"red": [(1, 2, 3)]})
    assert info == info2 and env.target_colors["red"] == (1, 2, 3) and env.target_colors["blue"] == TARGET_COLORS["blue"]
    red = (plain["image"] == np.array(TARGET_COLORS["red"])[:, None, None]).all(axis=0)
    assert red.any()
    assert (shaded["image"][:, red] == np.array([1, 2, 3])[:, None]).all()
    np.testing.assert_array_equal(shaded["image"][:, ~red], plain["image"][:, ~red])
    env = LangReachEnv(target_shades={"green": [(0, 1, 0), (0, 2, 0)]}, seed=0)
    seen = set()
    for _ in range(30):
        env.reset()
        seen.add(env.target_colors["green"])
    assert seen == {(0, 1, 0), (0, 2, 0)}


def test_start_range_is_a_square_annulus():
    env = LangReachEnv(start_range=(0.25, 0.4), seed=0)
    starts = np.array([env.reset()[0]["state"][:2] for _ in range(300)])
    norms = np.abs(starts).max(axis=1)
    assert norms.min() >= 0.25 - 1e-6 and norms.max() <= 0.4 + 1e-6
    assert (starts < 0).any() and (starts > 0).any()
    default = LangReachEnv(seed=0)
    assert max(np.abs(default.reset()[0]["state"][:2]).max() for _ in range(100)) <= 0.2 + 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(background_colors=[(256, 0, 0)]), "background_colors must be an RGB triple"),
        (dict(background_colors=[(1, 2)]), "background_colors must be an RGB triple"),
        (dict(background_colors=[]), "non-empty sequence of RGB triples"),
        (dict(background_colors=(0, 0, 0)), "background_colors must be an RGB triple"),
        (dict(image_noise_std=-1.0), "image_noise_std must be a finite number >= 0"),
        (dict(image_noise_std=float("nan")), "image_noise_std must be a finite number >= 0"),
        (dict(target_shades={"purple": [(1, 2, 3)]}), "unknown target names"),
        (dict(target_shades={"red": [(1.5, 2, 3)]}), r"target_shades\['red'\] must be an RGB triple"),
        (dict(target_shades=[(1, 2, 3)]), "target_shades must be None or a dict"),
        (dict(start_range=(0.3, 0.2)), "0 <= inner < outer <= 1"),
        (dict(start_range=(0.0, 1.5)), "0 <= inner < outer <= 1"),
        (dict(start_range=0.2), "0 <= inner < outer <= 1"),
    ],
)
def test_bad_variations_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LangReachEnv(**kwargs)


def test_ood_variations_are_held_out_and_change_only_their_factors():
    ind = OOD_VARIATIONS["ind"]
    for category in ("vision", "semantics", "execution"):
        kwargs = ood_env_kwargs(category)
        changed = {k for k in kwargs if kwargs[k] != ind[k]}
        assert changed == set(OOD_VARIATIONS[category])
        env = LangReachEnv(**kwargs, seed=0)
        for _ in range(5):
            assert len(env.reset()[1]["instruction"].encode()) <= 23  # ByT5, max_length 24 with EOS: nothing cut
    assert not set(OOD_VARIATIONS["vision"]["background_colors"]) & set(ind["background_colors"])
    assert OOD_VARIATIONS["vision"]["image_noise_std"] > 0 == ind["image_noise_std"]
    semantics = OOD_VARIATIONS["semantics"]
    assert not set(semantics["instruction_templates"]) & set(ind["instruction_templates"])
    for name in TARGET_NAMES:
        assert not set(semantics["target_shades"][name]) & set(ind["target_shades"][name])
    assert OOD_VARIATIONS["execution"]["start_range"][0] > ind["start_range"][1]
    with pytest.raises(ValueError, match="Unknown OOD category 'colour'"):
        ood_env_kwargs("colour")
