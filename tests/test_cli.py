"""`storm-hf` itself: exit status 2 and a one-line message for input errors in every command (a missing, unreadable
or incomplete `storm-hf train` config among them), and --help that explains every option."""

import argparse
import json
import subprocess
import sys
import warnings

import pytest

from storm_hf.apps.cli import main
from storm_hf.training.job import CONFIG_KEYS, load_config, validate_config

GOOD = {"model": "ckpt", "train_file": "data/train.jsonl", "training": {"output_dir": "runs/x", "max_steps": 2}}


def run_cli(capsys, *argv):
    """(exit status, stderr) of `storm-hf ARGV` run in this process."""
    try:
        status = main(list(argv))
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name, text, message", [
    ("job.yaml", None, "job.yaml: no such config file."),
    ("job.yaml", "model: [ckpt\ntrain_file: t\n", "job.yaml: not valid YAML at line 2, column 11"),
    ("job.json", '{"model": "ckpt",}', "job.json: not valid JSON at line 1, column 18 (Expecting property name"),
    ("job.yaml", "", "job.yaml: the config is empty; it needs at least model, train_file and training.output_dir."),
    ("job.yaml", "- model\n- train_file\n", "job.yaml: the config must be a mapping of keys"),
    ("job.json", json.dumps({k: v for k, v in GOOD.items() if k != "model"}),
     "job.json: the config needs 'model': a STORM checkpoint folder or Hub id."),
    ("job.json", json.dumps({k: v for k, v in GOOD.items() if k != "train_file"}),
     "job.json: the config needs 'train_file': the JSON / JSONL training records."),
    ("job.json", json.dumps({**GOOD, "training": {"max_steps": 2}}), "job.json: the config needs training.output_dir"),
    ("job.json", json.dumps({k: v for k, v in GOOD.items() if k != "training"}), "the config needs training.output_dir"),
    ("job.json", json.dumps({**GOOD, "trainfile": "x"}), f"unknown key 'trainfile' (the keys are "
     f"{', '.join(CONFIG_KEYS)}); did you mean 'train_file'?"),
    ("job.json", json.dumps({**GOOD, "training": {"output_dir": "x", "max_step": 2}}),
     "unknown key 'max_step' in training (not a transformers.TrainingArguments field); did you mean 'max_steps'?"),
    ("job.json", json.dumps({**GOOD, "stage": "full"}), "unknown stage 'full'; choose one of alignment, sft, lora."),
    ("job.json", json.dumps({**GOOD, "num_frames": 2.5}), "num_frames must be a whole number of frames, at least 1; got 2.5."),
    ("job.json", json.dumps({**GOOD, "part_learning_rates": {"temporal": 1e-3}}),
     "unknown key 'temporal' in part_learning_rates (the parts are vision_tower, projector, temporal_encoder, "
     "language_model, lm_head); did you mean 'temporal_encoder'?"),
    ("job.json", json.dumps({**GOOD, "part_learning_rates": {"projector": "fast"}}),
     "part_learning_rates.projector must be a learning rate (a number >= 0), got 'fast'."),
    ("job.json", json.dumps({**GOOD, "part_learning_rates": [1e-3]}),
     "'part_learning_rates' must be a mapping of part to learning rate"),
])
def test_train_config_errors_are_one_line_with_status_2(tmp_path, capsys, name, text, message):
    path = str(tmp_path / name) if text is None else write(tmp_path, name, text)
    status, err = run_cli(capsys, "train", path)
    assert status == 2 and message in err and err.count("\n") == 1, err  # one line, naming the file
    assert err.startswith(f"storm-hf train: error: {tmp_path / name}: ")


def test_a_folder_given_as_config_and_errors_while_training_exit_with_status_2(tmp_path, capsys):
    status, err = run_cli(capsys, "train", str(tmp_path))
    assert status == 2 and "is a folder; give the job's JSON or YAML file." in err
    # A config that loads, naming a checkpoint that is not there: the loader's error, on one line.
    path = write(tmp_path, "job.json", json.dumps({**GOOD, "model": str(tmp_path / "no-such-checkpoint"),
                                                   "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1,
                                                                "use_cpu": True}}))
    status, err = run_cli(capsys, "train", path)
    assert status == 2 and "no-such-checkpoint" in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_console_script_exits_with_status_2_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "storm_hf", "train", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"storm-hf train: error: {tmp_path / 'missing.yaml'}: no such config file.\n"


def test_every_command_uses_status_2_for_input_errors(tmp_path, capsys):
    assert run_cli(capsys, "eval", str(tmp_path / "missing.jsonl"))[0] == 2
    assert run_cli(capsys, "demo", "--video", str(tmp_path / "missing.mp4"), "--question", "q ?")[0] == 2
    assert run_cli(capsys, "bogus")[0] == 2 and run_cli(capsys, "train")[0] == 2  # argparse's own usage errors


def test_old_gradient_checkpointing_configs_still_work_under_the_new_name(tmp_path):
    from transformers import TrainingArguments

    old = write(tmp_path, "old.yaml", "model: ckpt\ntrain_file: t.jsonl\ntraining:\n  output_dir: out\n"
                                      "  gradient_checkpointing: true\n  gradient_checkpointing_kwargs: {use_reentrant: false}\n")
    config = load_config(old)
    assert config["training"] == {"output_dir": "out", "activation_checkpointing": True,
                                  "activation_checkpointing_kwargs": {"use_reentrant": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers warns on the deprecated names only
        args = TrainingArguments(**config["training"], report_to=[])
    assert args.activation_checkpointing and args.gradient_checkpointing  # train() reads either name
    with pytest.raises(ValueError, match="training has both 'gradient_checkpointing' and 'activation_checkpointing'"):
        validate_config({**GOOD, "training": {"output_dir": "o", "gradient_checkpointing": True,
                                              "activation_checkpointing": True}})
    assert validate_config(GOOD) == GOOD and validate_config(GOOD) is not GOOD


def parser_of(command, capsys, monkeypatch):
    """The argparse parser `storm-hf COMMAND` builds (caught as it parses ``--help``)."""
    parsers = []
    real = argparse.ArgumentParser.parse_args

    def catch(self, args=None, namespace=None):
        parsers.append(self)
        return real(self, args, namespace)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        status, _ = run_cli(capsys, command, "--help")
    assert status == 0
    return parsers[-1]


@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_help_explains_every_option(command, capsys, monkeypatch):
    parser = parser_of(command, capsys, monkeypatch)
    undocumented = [action.option_strings or action.dest for action in parser._actions if not action.help]
    assert undocumented == []
    text = parser.format_help()
    words = " ".join(text.split())  # argparse wraps help lines
    if command == "train":  # the config's keys, what they do, and how to run on several processes
        for key in CONFIG_KEYS + ("output_dir", "activation_checkpointing"):
            assert f"{key}:" in text, key
        assert "accelerate launch --multi_gpu --num_processes N -m storm_hf train CONFIG" in text
        assert "gradient_checkpointing: true" not in text
    if command == "demo":
        assert 'pip install -e ".[demo]" in the repository root' in words and "storm_hf[" not in words
