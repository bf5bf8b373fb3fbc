"""Configs (squad/config/loading.py with squad/train/config.py) and policies (squad/config/policy.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from squad.config.loading import load_config
from squad.errors import ConfigError, SquadError
from squad.config.policy import Policy, load_policies, load_policy
from squad.train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "configs" / "train.yaml"
TINY = ROOT / "configs" / "train_tiny.yaml"


# ---------------------------------------------------------------------------------------------
# The repo's configs


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get(model, dotted: str):
    for part in dotted.split("."):
        model = getattr(model, part)
    return model


@pytest.mark.parametrize("path", [TRAIN, TINY], ids=["train", "train_tiny"])
def test_repo_config_values_reach_the_model(path):
    from omegaconf import OmegaConf

    cfg = load_config(path, TrainConfig)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    leaves = dict(_leaves(raw))
    assert leaves
    for key, value in leaves.items():
        got = _get(cfg, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key


def test_train_yaml_validates():
    cfg = load_config(TRAIN, TrainConfig)
    assert isinstance(cfg, TrainConfig)
    assert cfg.aligner.base == "smollm2-135m-instruct"
    assert cfg.inspector.base == "all-minilm-l6-v2"
    assert isinstance(cfg.aligner.lr, float) and cfg.aligner.lr > 0  # YAML "4e-4"-style floats parse
    assert cfg.limit is None


def test_train_tiny_yaml_validates():
    cfg = load_config(TINY, TrainConfig)
    assert cfg.aligner.base == "tiny-causal-lm" and cfg.inspector.base == "tiny-encoder"
    assert cfg.limit == 12
    assert cfg.wandb.mode == "offline"
    assert cfg.aligner.scaling.cpus_per_worker == pytest.approx(0.25)
    # Fields the file leaves out come from the pydantic defaults.
    assert cfg.aligner.lora_r == TrainConfig().aligner.lora_r


# ---------------------------------------------------------------------------------------------
# Overrides


def test_overrides_apply():
    cfg = load_config(TRAIN, TrainConfig, ["aligner.epochs=5", "inspector.hidden=64", "run_name=other",
                                           "criteria=[ethics,honesty]", "aligner.scaling.num_workers=2"])
    assert cfg.aligner.epochs == 5
    assert cfg.inspector.hidden == 64
    assert cfg.run_name == "other"
    assert cfg.criteria == ["ethics", "honesty"]
    assert cfg.aligner.scaling.num_workers == 2
    # Untouched fields keep the file's values.
    base = load_config(TRAIN, TrainConfig)
    assert cfg.aligner.lr == base.aligner.lr and cfg.aligner.batch_size == base.aligner.batch_size
    assert cfg.inspector.epochs == base.inspector.epochs


def test_later_override_wins():
    cfg = load_config(TRAIN, TrainConfig, ["aligner.epochs=5", "aligner.epochs=7"])
    assert cfg.aligner.epochs == 7


def test_interpolation_is_resolved(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run_name: exp1\noutput: out/${run_name}/bundle\n")
    assert load_config(p, TrainConfig).output == "out/exp1/bundle"
    assert load_config(p, TrainConfig, ["run_name=exp2"]).output == "out/exp2/bundle"


def _config_error(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, TrainConfig, overrides)
    assert isinstance(e.value, SquadError)
    return str(e.value)


@pytest.mark.parametrize("override, field", [
    ("aligner.epochz=3", "aligner.epochz"),
    ("bogus=1", "bogus"),
    ("aligner.epochs=0", "aligner.epochs"),
    ("aligner.epochs=many", "aligner.epochs"),
    ("aligner.mode=qlora", "aligner.mode"),
    ("inspector.kind=huge", "inspector.kind"),
    ("aligner.lora_dropout=1.0", "aligner.lora_dropout"),
    ("aligner.scaling.num_workers=0", "aligner.scaling.num_workers"),
    ("max_steps=0", "max_steps"),
    ("wandb.mode=sometimes", "wandb.mode"),
])
def test_bad_override_names_file_and_field(override, field):
    msg = _config_error(TRAIN, [override])
    assert str(TRAIN) in msg
    assert f"field '{field}'" in msg, msg


def test_unknown_key_in_file_names_file_and_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run_name: x\naligner:\n  epochs: 2\n  learning_rate: 0.1\n")
    msg = _config_error(p)
    assert str(p) in msg and "field 'aligner.learning_rate'" in msg
    assert "Extra inputs are not permitted" in msg


def test_bad_value_in_file_names_file_and_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("inspector:\n  max_length: 4\n")
    msg = _config_error(p)
    assert str(p) in msg and "field 'inspector.max_length'" in msg


def test_missing_deepspeed_file_is_reported(tmp_path):
    msg = _config_error(TRAIN, [f"aligner.deepspeed={tmp_path / 'nope.json'}"])
    assert "aligner.deepspeed" in msg and "does not exist" in msg


def test_existing_deepspeed_file_is_accepted():
    ds = ROOT / "configs" / "deepspeed_zero2.json"
    assert load_config(TRAIN, TrainConfig, [f"aligner.deepspeed={ds}"]).aligner.deepspeed == str(ds)


@pytest.mark.parametrize("override", ["aligner.epochs", "epochs5", ""])
def test_malformed_override_errors(override):
    with pytest.raises(ConfigError, match=re.escape(f"override {override!r} is not key=value")):
        load_config(TRAIN, TrainConfig, ["aligner.epochs=4", override])


def test_override_that_clashes_with_the_file_structure(tmp_path):
    # aligner is a mapping in the file; an override can't turn it into a scalar silently.
    msg = _config_error(TRAIN, ["aligner=5"])
    assert str(TRAIN) in msg and "field 'aligner'" in msg, msg


def test_missing_config_file(tmp_path):
    msg = _config_error(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in msg and "not found" in msg


def test_malformed_yaml_is_a_config_error(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("aligner: {epochs: 2\nrun_name: ]\n")
    msg = _config_error(p)
    assert str(p) in msg
    assert "line 2, column 9" in msg, msg  # the parser's own account of where the file breaks


def test_missing_interpolation_is_a_config_error(tmp_path):
    p = tmp_path / "interp.yaml"
    p.write_text("output: out/${nowhere}\n")
    msg = _config_error(p)
    assert str(p) in msg and "nowhere" in msg


# ---------------------------------------------------------------------------------------------
# Policies

POLICY = {
    "principle": "Be good.",
    "misaligned": "Being bad.",
    "threshold": "0.5",
    "priority": "0",
    "instruction": "Rewrite it.",
    "refusal": "No.",
}


def write_policy(root: Path, folder: str, **fields) -> Path:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    body = {"name": folder, **POLICY, **{k: str(v) for k, v in fields.items()}}
    (d / "policy.yaml").write_text("".join(f"{k}: {v}\n" for k, v in body.items()))
    return d


def test_valid_policy(tmp_path):
    d = write_policy(tmp_path, "toxicity", threshold=0.35, priority=3)
    p = load_policy(d)
    assert isinstance(p, Policy)
    assert (p.name, p.threshold, p.priority, p.instruction) == ("toxicity", 0.35, 3, "Rewrite it.")


@pytest.mark.parametrize("threshold", [1.5, -0.1])
def test_policy_bad_threshold(tmp_path, threshold):
    d = write_policy(tmp_path, "ethics", threshold=threshold)
    with pytest.raises(ConfigError) as e:
        load_policy(d)
    msg = str(e.value)
    assert str(d / "policy.yaml") in msg and "field 'threshold'" in msg


def test_policy_name_mismatch(tmp_path):
    d = write_policy(tmp_path, "ethics", name="honesty")
    with pytest.raises(ConfigError) as e:
        load_policy(d)
    msg = str(e.value)
    assert str(d / "policy.yaml") in msg and "field 'name'" in msg
    assert "'honesty'" in msg and "'ethics'" in msg


def test_policy_bad_name(tmp_path):
    d = write_policy(tmp_path, "Bad-Name")
    with pytest.raises(ConfigError, match="field 'name'"):
        load_policy(d)


def test_policy_unknown_and_missing_fields(tmp_path):
    d = write_policy(tmp_path, "ethics", colour="blue")
    with pytest.raises(ConfigError, match="field 'colour'"):
        load_policy(d)
    d2 = tmp_path / "honesty"
    d2.mkdir()
    (d2 / "policy.yaml").write_text("name: honesty\nprinciple: p\n")
    with pytest.raises(ConfigError) as e:
        load_policy(d2)
    for f in ("misaligned", "instruction", "refusal"):
        assert f"field '{f}'" in str(e.value)


def test_policy_folder_without_policy_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no policy.yaml"):
        load_policy(tmp_path)


def test_malformed_policy_yaml_is_a_config_error(tmp_path):
    d = tmp_path / "ethics"
    d.mkdir()
    (d / "policy.yaml").write_text("name: ethics\nprinciple: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_policy(d)
    assert str(d / "policy.yaml") in str(e.value)


def test_load_policies_subset_and_errors(tmp_path):
    for name in ("alpha", "beta", "gamma"):
        write_policy(tmp_path, name)
    assert list(load_policies(tmp_path)) == ["alpha", "beta", "gamma"]
    assert list(load_policies(tmp_path, ["gamma", "alpha"])) == ["gamma", "alpha"]
    with pytest.raises(ConfigError, match=r"unknown criteria \['delta'\]"):
        load_policies(tmp_path, ["alpha", "delta"])
    with pytest.raises(ConfigError, match="no policies found"):
        load_policies(tmp_path / "alpha" / "empty_dir_that_does_not_exist")


def test_a_bad_policy_among_good_ones_is_reported(tmp_path):
    write_policy(tmp_path, "alpha")
    write_policy(tmp_path, "beta", threshold=2)
    with pytest.raises(ConfigError, match=r"beta/policy\.yaml: field 'threshold'"):
        load_policies(tmp_path)


@pytest.mark.parametrize("bad", ["[delta]", "[alpha]"])
def test_policy_independent_of_names_other_criteria(tmp_path, bad):
    write_policy(tmp_path, "alpha", independent_of=bad)
    write_policy(tmp_path, "beta", independent_of="[alpha]")
    with pytest.raises(ConfigError) as e:
        load_policies(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "alpha" / "policy.yaml") in msg and "field 'independent_of'" in msg
    assert bad.strip("[]") in msg and "known: ['beta']" in msg


def test_policy_independent_of_loads(tmp_path):
    write_policy(tmp_path, "alpha", independent_of="[beta]")
    write_policy(tmp_path, "beta")
    found = load_policies(tmp_path)
    assert found["alpha"].independent_of == ["beta"] and found["beta"].independent_of == []
    assert load_policies(ROOT / "policies")["ethics"].independent_of == ["helpfulness", "honesty"]
