"""configure() and fail(): how every script takes its options and stops on a mistake."""

import pytest
from conftest import run_script

from configurator import configure, fail

SCRIPT = '''"""A script that trains something."""
import os

batch_size = 32  # per micro-step
learning_rate = 5e-4
out_dir = "out#1"  # where '#' in a string starts no comment
compile = False
resume = None
MAX_VOCAB = 65535
_cache = 0
'''
DEFAULTS = {"batch_size": 32, "learning_rate": 5e-4, "out_dir": "out#1", "compile": False, "resume": None}


@pytest.fixture
def script(tmp_path):
    """The globals of SCRIPT, as a script calling configure(globals()) has them."""
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    namespace = {"__file__": str(path)}
    exec(compile(SCRIPT, str(path), "exec"), namespace)
    return namespace


def config_file(tmp_path, text):
    path = tmp_path / "cfg.py"
    path.write_text(text)
    return str(path)


def error_line(capsys, namespace, argv):
    """The one stderr line configure() ends with; checks it exits 1."""
    with pytest.raises(SystemExit) as stop:
        configure(namespace, argv)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_defaults_are_kept_and_returned(script):
    assert configure(script, []) == DEFAULTS
    assert script["batch_size"] == 32 and script["MAX_VOCAB"] == 65535


def test_config_file_then_overrides_apply_in_order(script, tmp_path):
    cfg = config_file(tmp_path, "import math\nbatch_size = 4\nlearning_rate = 1e-3\n")
    config = configure(script, [cfg, "--learning_rate=2e-3", "--out_dir=runs/a b"])
    assert config == {**DEFAULTS, "batch_size": 4, "learning_rate": 2e-3, "out_dir": "runs/a b"}
    assert {key: script[key] for key in config} == config
    assert configure(script, ["--batch_size=8", cfg])["batch_size"] == 4  # the later one wins


def test_an_int_stands_for_a_float_and_a_string_is_taken_as_written(script):
    config = configure(script, ["--learning_rate=1", "--out_dir=3", "--resume=True"])
    assert config["learning_rate"] == 1.0 and type(config["learning_rate"]) is float
    assert config["out_dir"] == "3"
    assert config["resume"] is True  # a None default takes any type


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--batch_size=big", "--batch_size=big is a str, but batch_size takes a int (default 32)"),
        ("--batch_size=1.5", "is a float, but batch_size takes a int"),
        ("--compile=maybe", "takes a bool"),
        ("--learning_rate=True", "takes a float"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(script, capsys, arg, message):
    assert message in error_line(capsys, script, [arg])


def test_a_wrong_type_in_a_config_file_names_the_file(script, capsys, tmp_path):
    cfg = config_file(tmp_path, "batch_size = 'four'\n")
    assert f"batch_size = 'four' in {cfg} is a str, but batch_size takes a int" in error_line(
        capsys, script, [cfg]
    )


def test_an_unknown_key_suggests_the_closest(script, capsys, tmp_path):
    line = error_line(capsys, script, ["--batch_sise=4"])
    assert "unknown key 'batch_sise'. Did you mean --batch_size?" in line
    assert "Known keys: batch_size, compile, learning_rate, out_dir, resume" in line
    cfg = config_file(tmp_path, "import math\nlearnig_rate = 1e-3\n")
    assert "unknown key 'learnig_rate'. Did you mean --learning_rate?" in error_line(capsys, script, [cfg])


def test_a_missing_config_file_is_named(script, capsys, tmp_path):
    line = error_line(capsys, script, [str(tmp_path / "nope.py")])
    assert f"config file '{tmp_path / 'nope.py'}' not found (options are written --key=value)" in line


def test_a_config_file_that_is_a_directory_is_named(script, capsys, tmp_path):
    assert f"config file '{tmp_path}' is not a file" in error_line(capsys, script, [str(tmp_path)])


def test_a_key_without_a_value_is_refused(script, capsys):
    assert "'--batch_size' has no value: write it as --key=value" in error_line(
        capsys, script, ["--batch_size"]
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_size = 4\nlearning_rate = (1e-3\n", "line 2: '(' was never closed"),
        ("batch_size = 4\nlearning_rate = lr * 2\n", "line 2: NameError: name 'lr' is not defined"),
        ("import not_a_module_anywhere\n", "line 1: ModuleNotFoundError"),
    ],
)
def test_a_broken_config_file_gives_one_line_naming_it(script, capsys, tmp_path, text, message):
    cfg = config_file(tmp_path, text)
    assert f"error: config file '{cfg}' {message}" in error_line(capsys, script, [cfg])
    assert script["batch_size"] == 32  # nothing applied


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_docstring_and_each_option_with_its_default_and_comment(script, capsys, flag):
    with pytest.raises(SystemExit) as stop:
        configure(script, ["--batch_size=4", flag])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "A script that trains something."
    options = [line.split() for line in lines if line.startswith("  --")]
    assert options == [
        ["--batch_size=32", "per", "micro-step"],
        ["--learning_rate=0.0005"],
        ["--out_dir=out#1", "where", "'#'", "in", "a", "string", "starts", "no", "comment"],
        ["--compile=False"],
        ["--resume=None"],
    ]


def test_fail_prints_one_error_line_and_exits_1(capsys):
    with pytest.raises(SystemExit) as stop:
        fail("--top_p=2 must be in (0, 1]")
    assert stop.value.code == 1
    assert capsys.readouterr().err == "error: --top_p=2 must be in (0, 1]\n"


def test_train_py_help_lists_its_options():
    result = run_script("train.py", "--help")
    assert result.returncode == 0, result.stderr
    assert "Train a Llama" in result.stdout
    assert "  --learning_rate=0.01" in result.stdout
