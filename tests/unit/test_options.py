"""AnalysisOptions: one typed declaration, the options of every analyzing command."""

from __future__ import annotations

import re

import numpy as np
import pytest
import typer

from nrc_cli.cli import app
from nrc_cli.errors import ConfigError
from nrc_cli.options import AnalysisOptions


def _command_params(name: str) -> dict:
    """The parameters of a command, named as typed after ``nrc`` (``audit run``: a group's)."""
    command = typer.main.get_command(app)
    for word in name.split():
        command = command.commands[word]
    return {p.name: p for p in command.params}


@pytest.mark.parametrize("command", ["analyze", "check", "audit run"])
def test_every_option_is_in_every_analyzing_command_with_one_help_and_default(command):
    params = _command_params(command)
    for _name, spec, default in AnalysisOptions.cli_specs():
        assert spec.param in params, (command, spec.flag)
        param = params[spec.param]
        assert spec.flag in param.opts, (command, spec.flag, param.opts)
        assert param.help == spec.help, (command, spec.flag)
        if spec.kind == "repeat":
            assert param.default in (None, []), (command, spec.flag)
        else:
            assert param.default == default, (command, spec.flag, param.default)


def test_defaults_of_the_fields_are_the_documented_ones():
    o = AnalysisOptions()
    assert (o.batch_size, o.rank, o.svd, o.oversample, o.power_iters, o.seed) == (
        1024,
        None,
        "auto",
        10,
        4,
        0,
    )
    assert o.arch_kwargs == {} and o.layers == () and o.prediction is True
    assert o.budget_bytes() is None and o.budget_label == "auto"


def test_from_cli_parses_strings_into_types():
    values = {spec.param: default for _, spec, default in AnalysisOptions.cli_specs()}
    values.update(
        arch_kwargs='{"width": 64}',
        layers=["net.*"],
        no_prediction=True,
        memory_budget="4GB",
        rank=2,
    )
    o = AnalysisOptions.from_cli(values)
    assert o.arch_kwargs == {"width": 64}
    assert o.layers == ("net.*",)
    assert o.prediction is False
    assert o.budget_bytes() == 4_000_000_000 and o.budget_label == "4GB"
    assert o.rank == 2


def test_python_values_are_typed_not_text():
    o = AnalysisOptions(
        arch_kwargs={"width": 64}, memory_budget=2**20, layers=["a", "b"], rank=np.int64(3)
    )
    assert o.arch_kwargs == {"width": 64} and o.budget_bytes() == 2**20
    assert o.layers == ("a", "b") and o.rank == 3 and type(o.rank) is int
    assert AnalysisOptions(layers="net.0").layers == ("net.0",)


@pytest.mark.parametrize(
    ("kwargs", "message", "flag"),
    [
        ({"rank": 0}, r"rank: expected an integer >= 1, found 0", "--rank"),
        ({"rank": True}, r"rank: expected int or None, found bool", "--rank"),
        ({"batch_size": 2.5}, r"batch_size: expected int, found float 2\.5", "--batch-size"),
        ({"arch_kwargs": '{"a": 1}'}, r"arch_kwargs: expected a dict .*found str", "--arch-kwargs"),
        ({"memory_budget": "lots"}, r"memory_budget: expected a size like 4GB", "--memory-budget"),
        ({"memory_budget": 0}, r"memory_budget: expected a positive size", "--memory-budget"),
        ({"svd": "fast"}, r"svd: expected one of auto, exact, randomized, found 'fast'", "--svd"),
        ({"dtype": "float64"}, r"dtype: expected one of float32, bfloat16, float16", "--dtype"),
        ({"collapse_rule": "nrc9<=1"}, r"collapse_rule: unknown column 'nrc9'", "--collapse-rule"),
        ({"layers": [1]}, r"layers: expected strings", "--layers"),
        (
            {"output_key": "0", "prediction": False},
            r"output_key and prediction=False exclude each other",
            "--output-key and --no-prediction",
        ),
    ],
)
def test_bad_values_name_the_parameter_in_python_and_the_flag_on_the_command_line(
    kwargs, message, flag
):
    with pytest.raises(ConfigError) as info:
        AnalysisOptions(**kwargs)
    err = info.value
    assert re.fullmatch(message + ".*", err.message), err.message
    assert "--" not in err.message
    # The same text, with the flags: what the command line prints.
    assert err.cli_message.startswith(flag), err.cli_message
    param = "output_key and prediction=False" if "exclude" in message else message.split(":")[0]
    assert err.cli_message.removeprefix(flag) == err.message.removeprefix(param)


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        AnalysisOptions().rank = 3  # type: ignore[misc]
