# python -m pytest -q tests/test_config.py  — config parsing, overrides and errors that name the key.
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
])
def test_bad_values_name_the_key(args, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(args)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(["--config", write(tmp_path, "steps: [1,\n")])
    with pytest.raises(ConfigError, match="not found"):
        load_config(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="'loss.eps_hi'"):
        load_config(["--config", write(tmp_path, "loss:\n  eps_hi: 0.3\n")])
