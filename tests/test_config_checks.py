"""--config values go through the same type, choices, nargs and range checks as the command line."""
from __future__ import annotations

import pytest

from gpaco.classification.args import build_train_parser, parse_train_args
from gpaco.engine.args import FlagError, parse_with_config
from gpaco.engine.cli import run_cli
from gpaco.engine.logging import save_args_yaml
from gpaco.segmentation.train import parse_train_args as parse_seg_args

# parses without touching any data (cifar10 reads nothing at parse time)
CLS = ["--dataset", "cifar10", "--data-root", "data", "--arch", "resnet8"]


def config(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def config_error(tmp_path, text, parse=parse_train_args, argv=CLS):
    path = config(tmp_path, text)
    with pytest.raises(FlagError) as exc:
        parse(["--config", path, *argv])
    message = str(exc.value.code)
    assert "\n" not in message and message.startswith(f"error: --config {path}: key "), message
    return message.split(f"--config {path}: ", 1)[1]


def test_bad_choice_amp_and_boolean_string_are_refused(tmp_path):
    assert config_error(tmp_path, "schedule: constnat\n").startswith(
        "key 'schedule': invalid choice 'constnat' (choose from 'cosine', ")
    assert config_error(tmp_path, "amp: fp8\n") == "key 'amp': invalid choice 'fp8' (choose from 'none', 'fp16', 'bf16')"
    # a string "no" would have switched the flag on
    assert config_error(tmp_path, 'deterministic: "no"\n') == "key 'deterministic': expected true or false, got 'no'"
    assert config_error(tmp_path, "prior: 0\n") == "key 'prior': expected true or false, got 0"
    assert config_error(tmp_path, "amp: fp8\n", parse_seg_args, []).startswith("key 'amp': invalid choice 'fp8'")


def test_cli_exit_2_with_one_line(tmp_path, capsys):
    path = config(tmp_path, "schedule: constnat\n")
    with pytest.raises(SystemExit) as exc:
        run_cli(parse_train_args, ["--config", path, *CLS])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --config {path}: key 'schedule': invalid choice")


def test_int_flag_converts_or_refuses_strings(tmp_path):
    args = parse_train_args(["--config", config(tmp_path, 'epochs: "12"\nlr: 1e-3\nwd: 0\n'), *CLS])
    # "1e-3" is a YAML string, converted like the command-line token; a YAML int is a float
    assert (args.epochs, args.lr, args.wd) == (12, 0.001, 0.0) and isinstance(args.wd, float)
    assert config_error(tmp_path, 'epochs: "twelve"\n') == "key 'epochs': expected an integer, got 'twelve'"
    assert config_error(tmp_path, "epochs: 2.5\n") == "key 'epochs': expected an integer, got 2.5"
    assert config_error(tmp_path, "lr: true\n") == "key 'lr': expected a number, got true"
    assert config_error(tmp_path, "lr: null\n").startswith("key 'lr': expected a number, got null")
    assert config_error(tmp_path, "arch: {a: 1}\n") == "key 'arch': expected a string, got a mapping"
    # the post-parse checks see the converted value
    with pytest.raises(FlagError, match="--epochs must be > 0, got 0"):
        parse_train_args(["--config", config(tmp_path, 'epochs: "0"\n'), *CLS])


def test_nargs_flags_take_lists(tmp_path):
    args = parse_train_args(["--config", config(tmp_path, 'milestones: [3, "5"]\n'), *CLS])
    assert args.milestones == [3, 5]
    assert parse_train_args(["--config", config(tmp_path, "milestones: 4\n"), *CLS]).milestones == [4]
    assert config_error(tmp_path, "milestones: [3, x]\n") == "key 'milestones': expected an integer, got 'x'"
    assert config_error(tmp_path, "milestones: []\n") == \
        "key 'milestones': expected a list of one or more integers, got 0 values"
    seg = parse_seg_args(["--config", config(tmp_path, "crop_size: [32, 48]\n")])
    assert seg.crop_size == [32, 48]
    assert config_error(tmp_path, "crop_size: [32]\n", parse_seg_args, []) == \
        "key 'crop_size': expected a list of 2 integers, got 1 value"
    assert config_error(tmp_path, "crop_size: 32\n", parse_seg_args, []) == \
        "key 'crop_size': expected a list of 2 integers, got 32"
    assert config_error(tmp_path, "lr: [0.1]\n", parse_seg_args, []) == "key 'lr': expected a number, got a list"


def test_command_line_overrides_ignored_and_unknown_keys(tmp_path):
    path = config(tmp_path, "lr: 0.5\nepochs: 3\nresume: auto\noverwrite: true\ndry_run: yes\n")
    args = parse_train_args(["--config", path, *CLS, "--lr", "0.1"])
    assert (args.lr, args.epochs, args.resume, args.overwrite, args.dry_run) == (0.1, 3, None, False, False)
    # CONFIG_IGNORED keys are not checked either: they are skipped
    parse_train_args(["--config", config(tmp_path, "resume: [1]\n"), *CLS])
    with pytest.raises(FlagError, match=r"unknown key 'help'"):
        parse_with_config(build_train_parser(), ["--config", config(tmp_path, "help: true\n")])


# The command line gives a list for nargs flags, args.yaml too: tuple defaults are given as flags so
# that the Namespaces compare equal.
@pytest.mark.parametrize("parse,argv", [
    (parse_train_args, CLS + ["--method", "gpaco", "--lr", "0.1", "--milestones", "3", "5", "--deterministic",
                              "--no-prior", "--channels-last", "--schedule", "step", "--amp", "bf16"]),
    (parse_seg_args, ["--method", "ce", "--crop-size", "32", "48", "--no-sync-bn", "--ratio-range", "0.5", "2.0",
                      "--betas", "0.9", "0.999", "--amp", "fp16"]),
], ids=["train", "train_seg"])
def test_args_yaml_round_trip(tmp_path, parse, argv):
    first = parse(argv)
    save_args_yaml(first, tmp_path / "args.yaml")
    again = parse(["--config", str(tmp_path / "args.yaml")])
    assert vars(again).pop("config") == str(tmp_path / "args.yaml") and vars(first).pop("config") is None
    assert vars(again) == vars(first)
