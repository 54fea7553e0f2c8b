"""``rnn-spectra config``: every key with its value, check and meaning, one aligned line each;
bad input (an unknown prefix, ml_collections' FILE:ARG form) is one line, exit 2."""

import os

import pytest

from rnn_spectra.cli import main
from rnn_spectra.config import default_config, flat_keys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDING = os.path.join(REPO, "configs", "adding.py")


def config_cli(capsys, *args):
    code = main(["config", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_every_default_key_is_listed_once_with_its_check_and_meaning(capsys):
    code, lines, err = config_cli(capsys)
    assert code == 0 and err == ""
    keys = flat_keys(default_config())
    assert len(keys) == 60 and len(lines) == len(keys)
    assert sorted(line.split()[0] for line in lines) == sorted(keys)
    assert len({line.index(" = ") for line in lines}) == 1  # aligned
    [hidden] = [line for line in lines if line.startswith("model.hidden_size ")]
    assert hidden.split() == ["model.hidden_size", "=", "128", "(positive)", "H"]
    [mode] = [line for line in lines if line.startswith("parallel.mode ")]
    assert "(auto|none|data|sweep)" in mode
    [init] = [line for line in lines if line.startswith("model.init_scale ")]
    assert "= None" in init and "(positive or None)" in init


def test_a_prefix_filters_and_the_file_and_overrides_give_the_values(capsys):
    code, lines, _ = config_cli(capsys, "--config", ADDING, "train.", "--config.train.steps=7")
    assert code == 0
    assert [line.split()[0] for line in lines] == [
        "train.steps", "train.batch_size", "train.eval_every", "train.eval_batches",
        "train.eval_batch_size", "train.log_every", "train.progress"]  # declared order
    assert lines[0].split()[:3] == ["train.steps", "=", "7"]
    code, lines, _ = config_cli(capsys, "--config", ADDING, "train.eval_every")
    assert code == 0 and lines[0].split()[:3] == ["train.eval_every", "=", "200"]
    code, lines, _ = config_cli(capsys, "--config", ADDING, "model.cell")
    assert lines[0].split()[:3] == ["model.cell", "=", "'tanh_rnn'"]


def test_a_key_the_file_adds_is_marked_not_a_run_setting(capsys, tmp_path):
    path = tmp_path / "extra.py"
    path.write_text("from rnn_spectra.config import default_config\n"
                    "def get_config():\n    c = default_config()\n"
                    "    c.model.hidden_size = 9\n    c.model.extra = 1\n    return c\n")
    code, lines, _ = config_cli(capsys, "--config", str(path), "model.")
    assert code == 0
    assert lines[-1].startswith("model.extra") and "not a run setting" in lines[-1]
    assert any(line.split()[:3] == ["model.hidden_size", "=", "9"] for line in lines)


def assert_one_line(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rnn-spectra config: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("prefix, fragments", [
    ("modle", ("no config key starts with 'modle'", "did you mean model")),
    ("optim.lr", ("did you mean",)),
    ("zzzz", ("no config key starts with 'zzzz'",)),
])
def test_an_unknown_prefix_is_one_line(capsys, prefix, fragments):
    code, lines, err = config_cli(capsys, prefix)
    assert lines == []
    assert_one_line(code, err, *fragments)


def test_the_ml_collections_file_arg_form_is_refused_in_one_line(capsys):
    code, lines, err = config_cli(capsys, "--config", f"{ADDING}:tanh")
    assert lines == []
    assert_one_line(code, err, "FILE:ARG form is not supported", repr(ADDING))


def test_a_missing_file_and_an_unknown_override_are_one_line(capsys, tmp_path):
    assert_one_line(*config_cli(capsys, "--config", str(tmp_path / "no.py"))[::2], "does not exist")
    assert_one_line(*config_cli(capsys, "--config.model.cel=gru")[::2], "--config.model.cell")

