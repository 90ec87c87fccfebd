# python -m pytest -q tests/test_config.py  — config parsing, overrides and errors that name the key.
import os

import pytest

from dynamo.config import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_yaml_then_overrides_in_both_spellings(tmp_path):
    path = write(tmp_path, "steps: 7\noptim:\n  lr: 1.0e-4\nrollout:\n  temperature: 0.9\n")
    cfg = load_config(["--config", path, "optim.lr=2e-5", "--rollout.top_p=0.95", "steps=3"])
    assert (cfg.steps, cfg.optim.lr, cfg.rollout.temperature, cfg.rollout.top_p) == (3, 2e-5, 0.9, 0.95)
    assert isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("args, needle", [
    (["stpes=3"], "'stpes'"),
    (["optim.lrr=1"], "'optim.lrr'"),
    (["optim.lr=fast"], "'optim.lr'"),
    (["steps=2.5"], "'steps'"),
    (["template=fancy"], "'template'"),
    (["rollout.top_p=1.5"], "'rollout.top_p'"),
    (["mini_batches=3"], "'mini_batches'"),
    (["steps=0"], "'steps'"),
    (["optim=3"], "'optim'"),
    (["whatever"], "key=value"),
    (["allocation=random"], "'allocation'"),
    (["allocator.n_min=20"], "'allocator.n_min'"),
    (["allocator.n_min=6", "rollouts_per_prompt=5"], "'rollouts_per_prompt'"),
    (["allocator.n_max=7"], "'rollouts_per_prompt'"),
    (["allocator.rule=greedy"], "'allocator.rule'"),
    (["modulation.estimate=guess"], "'modulation.estimate'"),
    (["preset=decay7"], "'preset'"),
    (["samples_per_step=-1"], "'samples_per_step' must be >= 0"),
    (["sample_every=-2"], "'sample_every' must be >= 0"),
])
def test_bad_values_name_the_key(args, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(args)


def test_samples_per_step_defaults_to_4_and_may_be_0():
    assert load_config([]).samples_per_step == 4
    assert load_config(["samples_per_step=0"]).samples_per_step == 0  # no samples.jsonl rows


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(["--config", write(tmp_path, "steps: [1,\n")])
    with pytest.raises(ConfigError, match="not found"):
        load_config(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="'loss.eps_hi'"):
        load_config(["--config", write(tmp_path, "loss:\n  eps_hi: 0.3\n")])


def test_ablation_configs_differ_from_the_main_job_by_their_own_lines():
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    main = load_config(["--config", os.path.join(root, "default.yaml")])
    assert main.modulation.compensation and main.modulation.stabilization  # the main job is DynaMO
    grpo = load_config(["--config", os.path.join(root, "grpo.yaml")])
    assert not grpo.modulation.compensation and not grpo.modulation.stabilization
    assert grpo.out_dir == os.path.join("runs", "grpo")
    d5 = load_config(["--config", os.path.join(root, "decay5.yaml")])
    assert (d5.modulation.alpha, d5.modulation.tau) == (0.4, 0.9)
    names = [n for n in os.listdir(root) if n.endswith(".yaml")]
    names += [os.path.join("paper", n) for n in os.listdir(os.path.join(root, "paper"))]
    for name in names:
        cfg = load_config(["--config", os.path.join(root, name)])  # every shipped config is valid
        assert cfg.out_dir.endswith(os.path.splitext(os.path.basename(name))[0])


def test_paper_recipe_has_the_official_run_scripts_values():
    root = os.path.join(os.path.dirname(__file__), "..", "configs", "paper")
    c = load_config(["--config", os.path.join(root, "qwen2.5-math-7b.yaml")])
    assert (c.prompts_per_step, c.rollouts_per_prompt, c.allocator.n_min, c.allocator.n_max) == (512, 16, 8, 24)
    assert c.prompts_per_step // c.mini_batches == 32 and c.allocation == "dynamo"
    assert (c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay, c.optim.grad_clip) == (1e-6, 10, 0.1, 1.0)
    assert (c.loss.eps_low, c.loss.eps_high, c.loss.dual_clip) == (0.2, 0.28, 10.0)
    assert (c.rollout.temperature, c.rollout.top_p) == (1.0, 1.0)
    assert c.modulation.compensation and c.modulation.stabilization and c.modulation.tau == 0.99  # decay6
    assert (c.eval_every, c.checkpoint_every, c.steps, len(c.eval_data)) == (5, 20, 2000, 6)
    small = load_config(["--config", os.path.join(root, "qwen2.5-math-1.5b-1gpu.yaml")])
    assert (small.optim.lr, small.loss.eps_high, small.modulation.tau) == (1e-6, 0.28, 0.99)  # kept from the base
    assert small.prompts_per_step * small.rollouts_per_prompt < c.prompts_per_step * c.rollouts_per_prompt


def test_print_config_errors_without_a_traceback():
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "dynamo.config", "stepz=3"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=60)
    assert res.returncode == 1 and res.stderr.startswith("config error: ") and "Traceback" not in res.stderr


def test_a_key_given_twice_is_an_error_in_either_spelling():
    with pytest.raises(ConfigError, match=r"config key 'steps' is given 2 times on the command line \('40', '30'\)"):
        load_config(["steps=40", "--steps=30"])


def test_a_missing_base_names_the_file_that_named_it(tmp_path):
    (tmp_path / "cfg").mkdir()
    child = tmp_path / "cfg" / "mine.yaml"
    child.write_text("base: default.yaml\nsteps: 3\n")
    with pytest.raises(ConfigError, match=r"named by 'base:' in .*mine.yaml; a base path is relative to the file"):
        load_config(["--config", str(child)])
