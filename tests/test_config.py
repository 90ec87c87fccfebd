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


# ------------------------------------------------------------------ typos, the main job as the default, --help

def test_a_typo_suggests_the_key_it_is_close_to():
    with pytest.raises(ConfigError, match=r"unknown config key 'step': did you mean 'steps'\?"):
        load_config(["step=10"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr': did you mean 'optim.lr'\?"):
        load_config(["optim.lrr=1e-5"])
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz' \('zzz' is not a field"):
        load_config(["zzz=1"])  # nothing close: no suggestion


def test_a_typo_in_a_base_file_names_that_file(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 3\nstepz: 4\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"in .*base\.yaml: unknown config key 'stepz': did you mean 'steps'"):
        load_config(["--config", str(tmp_path / "child.yaml")])
    (tmp_path / "child.yaml").write_text("base: base2.yaml\noptim:\n  lr: fast\n")
    (tmp_path / "base2.yaml").write_text("steps: 3\n")
    with pytest.raises(ConfigError, match=r"in .*child\.yaml: config key 'optim.lr'"):
        load_config(["--config", str(tmp_path / "child.yaml")])


def test_no_config_file_runs_the_main_job(monkeypatch, tmp_path):
    """`python train.py` with no --config is configs/default.yaml: the same config, folder and identity."""
    from dynamo import launch
    from dynamo.config import MAIN_CONFIG, dump, run_identity, with_main_config
    main = load_config(["--config", MAIN_CONFIG, "steps=3"])
    bare = launch.read_config(["steps=3"], "")
    assert dump(bare) == dump(main) and bare.out_dir == os.path.join("runs", "default")
    assert bare.modulation.compensation and bare.modulation.stabilization and bare.micro_batch_size == 128
    assert with_main_config(["--config", "x.yaml", "steps=3"]) == ["--config", "x.yaml", "steps=3"]
    monkeypatch.chdir(os.path.dirname(os.path.dirname(MAIN_CONFIG)))
    assert with_main_config([])[:2] == ["--config", os.path.join("configs", "default.yaml")]
    ident, given = run_identity(["steps=3"], bare), run_identity(["--config", "configs/default.yaml", "steps=3"], main)
    assert ident["config_file"] == given["config_file"] == os.path.join("configs", "default.yaml")
    assert ident["config_sha256"] == given["config_sha256"] and ident["overrides"] == ["steps=3"]
    monkeypatch.chdir(tmp_path)  # from elsewhere: the same file, by its absolute path
    assert with_main_config([])[1] == MAIN_CONFIG


def test_help_shows_the_values_a_command_runs_with_and_where_they_come_from():
    from dynamo.config import MAIN_CONFIG, resolved_help
    text = resolved_help(["steps=5", "--help"])
    lines = {line[2:].split()[0]: line for line in text.splitlines()[1:] if line[:2] in ("* ", "+ ", "  ")
             and line[2:3].strip()}  # (a long key's meaning continues on an indented line)
    assert lines["modulation.compensation"].startswith("* modulation.compensation bool = true")  # the main job's file
    assert lines["micro_batch_size"].startswith("* micro_batch_size int = 128")
    assert lines["steps"].startswith("+ steps int = 5")  # the command line
    assert lines["rollout.top_p"].startswith("  rollout.top_p float = 1.0")  # built in
    assert lines["preset"].startswith('  preset str = "" (decay5)')  # a default like any other key's
    assert MAIN_CONFIG in text.splitlines()[0] or "configs/default.yaml" in text.splitlines()[0]
    grpo = resolved_help(["--config", os.path.join(os.path.dirname(MAIN_CONFIG), "grpo.yaml")])
    assert "* modulation.compensation bool = false" in grpo and "* allocation str = \"uniform\"" in grpo
    decay5 = resolved_help(["--config", os.path.join(os.path.dirname(MAIN_CONFIG), "decay5.yaml")])
    assert '* preset str = "decay5"' in decay5 and "* modulation.tau float = 0.9" in decay5
    assert "does not load" in resolved_help(["stepz=3"]) and "  steps int = 80" in resolved_help(["stepz=3"])
    assert load_config(["preset="]).modulation.alpha == 0.2  # "" = no preset, as --help says


def test_help_notes_stay_on_their_own_keys():
    from dynamo.config import help_rows
    rows = {key: note for key, _, note in help_rows()}
    assert rows["loss.aggregation"].endswith("(each prompt weighs the same)")  # no section note glued on
    assert "--" not in rows["loss.aggregation"] and "baselines" not in rows["loss.aggregation"]


def test_print_config_is_the_yaml_train_py_saves():
    import subprocess
    import sys
    import yaml
    from dynamo.config import MAIN_CONFIG, dump
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-m", "dynamo.config", "steps=3"], capture_output=True, text=True, cwd=root,
                         timeout=60)
    assert res.returncode == 0 and res.stdout == dump(load_config(["--config", MAIN_CONFIG, "steps=3"]))
    assert yaml.safe_load(res.stdout)["out_dir"] == os.path.join("runs", "default")


def test_a_key_and_its_value_apart_get_the_one_argument_form():
    from dynamo.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=r"write steps=10: a key and its value in one argument"):
        load_config(["--steps", "10"])
    with pytest.raises(ConfigError, match=r"cannot read argument 'oops'") as e:
        load_config(["oops"])
    assert "write" not in str(e.value)
