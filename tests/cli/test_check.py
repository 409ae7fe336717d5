"""``nrc check`` through the command line: exit codes, messages, outputs, JUnit, and the commands
of docs/ci-gates.md ("Use in CI") run as written. Real checkpoints, real reports, real files in ``tmp_path``."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nrc_cli.cli import app
from nrc_cli.results import METRIC_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
RELU = ROOT / "tests" / "reference_cases" / "mlp_relu"
SAMPLES = ROOT / "sample_checkpoints"
DOCS = ROOT / "docs" / "ci-gates.md"

runner = CliRunner()


def nrc(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def analyze(checkpoint, data, out, *extra) -> str:
    result = nrc("analyze", checkpoint, "--data", data, "--format", "json", "--output", out, *extra)
    assert result.exit_code == 0, result.stderr
    return str(out)


@pytest.fixture(scope="module")
def relu_report(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("relu") / "run.json"
    # The reference MLP is a ReLU network; saying so keeps the activation from being assumed.
    return analyze(RELU / "model.safetensors", RELU / "data.npz", out, "--activation", "relu")


@pytest.fixture(scope="module")
def sample_reports(tmp_path_factory) -> dict[str, str]:
    if not (SAMPLES / "mlp_wd.safetensors").exists():
        pytest.skip("sample_checkpoints/ not generated (scripts/make_samples.py)")
    folder = tmp_path_factory.mktemp("samples")
    return {
        name: analyze(
            SAMPLES / f"mlp_{name}.safetensors", SAMPLES / "lowrank.npz", folder / f"{name}.json"
        )
        for name in ("wd", "nowd")
    }


# --------------------------------------------------------------------------- exit 0 and 1


def test_all_pass_exits_0(relu_report):
    result = nrc(
        "check", "--report", relu_report,
        "--require", "nrc1_noise[-1] <= 0.2",
        "--require", "first_collapsed_index<=3",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert last_line(result.stdout) == "2 passed, 0 failed"
    row = next(line for line in result.stdout.splitlines() if line.startswith("nrc1_noise[-1]"))
    assert row.split()[-1] == "PASS" and "6" in row.split()


def test_a_failing_requirement_exits_1_naming_it(relu_report):
    result = nrc(
        "check", "--report", relu_report,
        "-r", "nrc1_noise <= 0.2",
        "-r", "nrc1_noise[3:] <= 0.2",
    )  # fmt: skip
    assert result.exit_code == 1
    assert last_line(result.stdout) == "1 passed, 1 failed"
    assert result.stderr == "error: 1 of 2 checks failed: nrc1_noise <= 0.2\n"
    row = next(line for line in result.stdout.splitlines() if line.startswith("nrc1_noise <= 0.2"))
    # The worst layer is layer '0' (index 1), with nrc1_noise 0.8104.
    assert row.split()[-5:] == ["0.8104", "0", "<=", "0.2", "FAIL"]
    message = "FAIL nrc1_noise <= 0.2: 2 of 4 layers fail nrc1_noise <= 0.2: '0' 0.8104, '2' 0.4304"
    assert message in " ".join(result.stdout.split())


def test_null_summary_field_fails(tmp_path, relu_report):
    doc = json.loads(Path(relu_report).read_text())
    doc["summary"]["first_collapsed_index"] = None
    (tmp_path / "null.json").write_text(json.dumps(doc))
    result = nrc("check", "--report", tmp_path / "null.json", "-r", "first_collapsed_index<=5")
    assert result.exit_code == 1
    assert "first_collapsed_index is null (the last layer is not collapsed)" in " ".join(
        result.stdout.split()
    )
    assert last_line(result.stdout) == "0 passed, 1 failed"


def test_json_output(relu_report):
    result = nrc(
        "check", "--report", relu_report, "--format", "json",
        "-r", "nrc1_noise[-1] <= 0.2", "-r", "nrc3_alignment[2:3] >= 0.95",
    )  # fmt: skip
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert (doc["passed"], doc["failed"], doc["baseline"]) == (1, 1, None)
    first, second = doc["requirements"]
    assert first["expr"] == "nrc1_noise[-1] <= 0.2" and first["passed"] is True
    assert first["layers"] == ["6"] and first["worst_layer"] == "6"
    assert set(second) >= {
        "expr",
        "layers",
        "observed",
        "worst_layer",
        "bound",
        "passed",
        "message",
    }
    assert second["layers"] == ["2", "4"] and second["bound"] == 0.95 and not second["passed"]
    assert second["worst_layer"] == "4" and second["observed"] < 0.95
    assert doc["checkpoint"].endswith("model.safetensors")


def test_output_file(tmp_path, relu_report):
    out = tmp_path / "check.json"
    result = nrc("check", "--report", relu_report, "-r", "nrc1_noise[-1]<=0.2", "--output", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(out.read_text())["passed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["check.json"]


# --------------------------------------------------------------------------- exit 2

MALFORMED_CLI = [
    ("nrc1_noise<<0.2", "unexpected '<' at position 12", 12),
    ("nrc1_noise[<=0.2", "the '[' at position 11 is never closed", 11),
    ("foo<=1", "unknown column 'foo' at position 1; per-layer columns: index, in_dim, rank, ", 1),
    ("nrc1_noise<=abc", "unexpected 'a' at position 13: expected a number", 13),
    ("nrc1_noise", "expected an operator", 11),
    ("<= 0.2", "expected a column or summary field name", 1),
    ("nrc1_noise = 0.2", "unexpected '=' at position 12", 12),
    ("nrc1_noise[]<=0.2", "empty layer selector", 11),
    ("nrc1_noise[0]<=0.2", "indices are 1-based", 12),
    ("nrc1_noise[4:2]<=0.2", "empty index range [4:2]", 12),
    ("nrc1_noise[x:2]<=0.2", "range bound 'x' at position 12 is not an integer", 12),
    ("nrc1_noise<=0.2]", "unexpected ']' at position 16", 16),
    ("model_mse[-1]<=1", "'model_mse' is a summary field", 10),
    ("type==1", "'type' at position 1 holds text", 1),
]


@pytest.mark.parametrize(("expr", "fragment", "position"), MALFORMED_CLI)
def test_malformed_expression_exits_2_with_a_pointed_message(relu_report, expr, fragment, position):
    result = nrc("check", "--report", relu_report, "--require", expr)
    assert result.exit_code == 2
    assert result.stdout == ""
    error, hint, caret = result.stderr.rstrip("\n").split("\n")
    assert error.startswith(f"error: --require '{expr}': ")
    assert fragment in error and f"position {position}" in error
    assert hint == f"hint: {expr}"
    assert caret.index("^") == len("hint: ") + position - 1


def test_unknown_column_lists_the_valid_ones(relu_report):
    result = nrc("check", "--report", relu_report, "--require", "foo<=1")
    assert result.exit_code == 2
    error = result.stderr.splitlines()[0]
    for name in (*METRIC_COLUMNS, "first_collapsed_index", "model_mse"):
        assert name in error


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        (
            "nrc1_noise[99]<=0.1",
            "layer index 99 at position 12 matches no layer: the report has 4 "
            "layers, index 1 to 4; its layers (index 'name'): 1 '0', 2 '2', 3 '4', 4 '6'",
        ),
        ("nrc1_noise[net.6]<=0.1", "layer name 'net.6' at position 12 matches no layer"),
        ("nrc1_noise[layer4.*]<=0.1", "layer glob 'layer4.*' at position 12 matches no layer"),
        ("nrc1_noise[5:]<=0.1", "layer index range [5:] at position 12 matches no layer"),
    ],
)
def test_selector_matching_no_layer_exits_2(relu_report, expr, fragment):
    result = nrc("check", "--report", relu_report, "--require", expr)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: --require '{expr}': {fragment}")


def test_selector_matching_no_layer_exits_2_after_analysis_too():
    result = nrc(
        "check", RELU / "model.safetensors", "--data", RELU / "data.npz",
        "--require", "nrc1_noise[99]<=0.1",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "layer index 99 at position 12 matches no layer" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-r", "nrc1_noise<=1"],
            "error: expected a CHECKPOINT to analyze (with --data) or "
            "--report run.json, found neither",
        ),
        (
            ["--report", "{report}", "ckpt.safetensors", "-r", "nrc1_noise<=1"],
            "error: expected a CHECKPOINT to analyze or --report, found both",
        ),
        (
            ["--report", "{report}", "--data", "d.npz", "-r", "nrc1_noise<=1"],
            "error: --data 'd.npz' is for analyzing a CHECKPOINT",
        ),
        (
            ["ckpt.safetensors", "-r", "nrc1_noise<=1"],
            "error: analyzing 'ckpt.safetensors' needs --data, found none",
        ),
        (
            ["--report", "{report}"],
            "error: nothing to check: expected --require, --require-file or --baseline",
        ),
        (
            ["--report", "{report}", "-r", "nrc1_noise<=1", "--tolerance", "0.1"],
            "error: --tolerance: applies to the baseline comparison, but no --baseline was given",
        ),
        (
            ["--report", "{report}", "-r", "nrc1_noise<=1", "--format", "csv"],
            "error: --format: expected one of table, json, found 'csv'",
        ),
        (
            ["--report", "{tmp}/missing.json", "-r", "nrc1_noise<=1"],
            "error: --report '{tmp}/missing.json': no such file",
        ),
        (
            ["--report", "{tmp}/bad.json", "-r", "nrc1_noise<=1"],
            "error: --report '{tmp}/bad.json': not valid JSON: Expecting value at line 1, column 1",
        ),
        (
            ["--report", "{tmp}/list.json", "-r", "nrc1_noise<=1"],
            "error: --report '{tmp}/list.json': expected a JSON object with 'summary' and 'layers'",
        ),
        (
            ["--report", "{report}", "--baseline", "{tmp}/missing.json"],
            "error: --baseline '{tmp}/missing.json': no such file",
        ),
        (
            ["--report", "{report}", "-r", "nrc1_noise<=1", "--junit", "{tmp}/no/dir/j.xml"],
            "error: --junit '{tmp}/no/dir/j.xml': the folder",
        ),
        (
            [
                "--report",
                "{report}",
                "-r",
                "nrc1_noise<=1",
                "--tolerance",
                "x=1",
                "--baseline",
                "{report}",
            ],
            "error: --tolerance 'x=1': unknown metric column 'x'; expected one of nrc1_noise",
        ),
        (
            ["--report", "{report}", "--require-file", "{tmp}/none.toml"],
            "error: --require-file '{tmp}/none.toml': no such file",
        ),
        (["--report", "{report}", "--bogus"], "error: No such option: --bogus"),
    ],
)
def test_bad_usage_and_bad_inputs_exit_2(tmp_path, relu_report, args, message):
    (tmp_path / "bad.json").write_text("")
    (tmp_path / "list.json").write_text("[]")
    fill = {"report": relu_report, "tmp": str(tmp_path)}
    result = nrc("check", *(a.format(**fill) for a in args))
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith(message.format(**fill))
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_exits_2(tmp_path):
    result = nrc(
        "check", tmp_path / "none.safetensors", "--data", RELU / "data.npz", "-r", "rank<=9"
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")


# --------------------------------------------------------------------------- same verdict both ways


def test_gating_a_saved_report_equals_gating_a_fresh_analysis(relu_report):
    gates = [
        "--require", "nrc1_noise[-1] <= 0.2",
        "--require", "nrc3_alignment[2:] >= 0.99",
        "--require", "first_collapsed_index <= 3",
        "--require", "nrc4_ratio[4] < 2",
        "--baseline", relu_report, "--tolerance", "0",
    ]  # fmt: skip
    for fmt in ("json", "table"):
        saved = nrc("check", "--report", relu_report, "--format", fmt, *gates)
        fresh = nrc(
            "check", RELU / "model.safetensors", "--data", RELU / "data.npz", "--format", fmt,
            "--activation", "relu", *gates,
        )  # fmt: skip
        assert saved.exit_code == fresh.exit_code == 1
        assert saved.stdout == fresh.stdout
        assert saved.stderr == fresh.stderr
    doc = json.loads(saved.stdout if fmt == "json" else fresh.stdout) if fmt == "json" else None
    del doc
    failed = json.loads(nrc("check", "--report", relu_report, "-f", "json", *gates).stdout)
    assert failed["failed"] == 1
    assert [r["passed"] for r in failed["requirements"]] == [True, False, True, True]
    # Zero tolerance against itself: every baseline column passes exactly.
    assert all(c["passed"] and c["max_abs_diff"] == 0 for c in failed["baseline"]["columns"])


# --------------------------------------------------------------------------- baselines


def test_weight_decay_baseline_fails_without_weight_decay(tmp_path, sample_reports):
    wd, nowd = sample_reports["wd"], sample_reports["nowd"]
    junit = tmp_path / "junit.xml"
    result = nrc(
        "check", "--report", nowd, "--baseline", wd, "--tolerance", "0.02", "--junit", junit
    )
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "moved beyond tolerance since the baseline" in result.stdout
    # Collapse left the top layers: nrc1_noise moved on every layer from net.2 on.
    moved = {
        tuple(line.split()[:2])
        for line in lines
        if line.split()[:1] in ([c] for c in METRIC_COLUMNS)
    }
    for layer in ("net.2", "net.4", "net.6", "net.8", "net.10"):
        assert ("nrc1_noise", layer) in moved
    assert ("nrc3_alignment", "net.8") in moved
    assert result.stderr.startswith("error: ") and "baseline: nrc1_noise" in result.stderr

    doc = json.loads(nrc("check", "--report", nowd, "--baseline", wd, "-f", "json").stdout)
    columns = {c["column"]: c for c in doc["baseline"]["columns"]}
    assert not columns["nrc1_noise"]["passed"]
    noise_moved = {d["layer"]: d for d in columns["nrc1_noise"]["moved"]}
    assert set(noise_moved) == {"net.2", "net.4", "net.6", "net.8", "net.10"}
    assert noise_moved["net.10"]["baseline"] < 0.01 < 0.1 < noise_moved["net.10"]["current"]
    assert doc["baseline"]["layers_passed"] and doc["baseline"]["only_in_current"] == []

    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"baseline: layers"} | {f"baseline: {c}" for c in METRIC_COLUMNS}
    assert int(suite.get("failures")) == doc["failed"] and int(suite.get("tests")) == 9
    failure = cases["baseline: nrc1_noise"].find("failure")
    assert failure.get("type") == "BaselineDrift" and "net.10: baseline 0.000358" in failure.text


def test_weight_decay_baseline_passes_against_itself(tmp_path, sample_reports):
    wd = sample_reports["wd"]
    junit = tmp_path / "junit.xml"
    result = nrc("check", "--report", wd, "--baseline", wd, "--junit", junit)
    assert result.exit_code == 0, result.stderr
    assert last_line(result.stdout) == "9 passed, 0 failed"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("9", "0")
    assert all(len(c) == 0 for c in suite.findall("testcase"))


def test_layers_added_or_removed_fail(tmp_path, relu_report):
    sub = analyze(
        RELU / "model.safetensors", RELU / "data.npz", tmp_path / "sub.json", "--exclude", "0"
    )
    result = nrc("check", "--report", sub, "--baseline", relu_report, "-f", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["baseline"]["only_in_baseline"] == ["0"] and not doc["baseline"]["layers_passed"]
    assert doc["baseline"]["layers_message"].startswith("removed since the baseline: '0'")
    assert doc["failed"] == 1
    table = nrc("check", "--report", sub, "--baseline", relu_report)
    assert (
        "FAIL baseline: layers: removed since the baseline: '0' (3 layers matched)" in table.stdout
    )


def test_per_column_tolerance(sample_reports):
    wd, nowd = sample_reports["wd"], sample_reports["nowd"]
    tolerances = ["--tolerance", "100"] + [
        arg for c in ("nrc1_noise", "nrc2_cka") for arg in ("--tolerance", f"{c}=0.5")
    ]
    result = nrc("check", "--report", nowd, "--baseline", wd, "-f", "json", *tolerances)
    assert result.exit_code == 0, result.stdout
    tight = nrc("check", "--report", nowd, "--baseline", wd, "-f", "json", "--tolerance", "100",
                "--tolerance", "nrc1_noise=0.1")  # fmt: skip
    assert tight.exit_code == 1
    failed = [
        c["column"] for c in json.loads(tight.stdout)["baseline"]["columns"] if not c["passed"]
    ]
    assert failed == ["nrc1_noise"]


def test_require_file(tmp_path, relu_report):
    (tmp_path / "base").mkdir()
    shutil.copy(relu_report, tmp_path / "base" / "relu.json")
    gates = tmp_path / "gates.toml"
    gates.write_text(
        'require = ["nrc1_noise[-1] <= 0.2", "first_collapsed_index <= 2"]\n'
        '[baseline]\npath = "base/relu.json"\ntolerance = 0\n'
    )
    result = nrc("check", "--report", relu_report, "--require-file", gates, "-f", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [r["expr"] for r in doc["requirements"]] == [
        "nrc1_noise[-1] <= 0.2",
        "first_collapsed_index <= 2",
    ]
    assert doc["requirements"][1]["source"] == f"{gates}: require[1]"
    assert doc["baseline"]["path"] == str(tmp_path / "base" / "relu.json")
    assert doc["baseline"]["tolerance"] == 0 and doc["failed"] == 1
    # --require adds to the file's requirements, first.
    more = nrc(
        "check", "--report", relu_report, "--require-file", gates, "-r", "rank<=2", "-f", "json"
    )
    assert json.loads(more.stdout)["requirements"][0]["expr"] == "rank<=2"
    bad = tmp_path / "bad.toml"
    bad.write_text('require = ["nrc1_noise[-1] <<= 0.2"]\n')
    result = nrc("check", "--report", relu_report, "--require-file", bad)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {bad}: require[0] 'nrc1_noise[-1] <<= 0.2': ")


def test_junit_for_requirements(tmp_path, relu_report):
    junit = tmp_path / "out" / "nrc.xml"
    junit.parent.mkdir()
    result = nrc(
        "check", "--report", relu_report, "--junit", junit,
        "-r", "nrc1_noise <= 0.5", "-r", "nrc1_noise[-1] <= 0.2", "-r", "first_collapsed_index<=3",
    )  # fmt: skip
    assert result.exit_code == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "nrc check"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "0")
    names = [c.get("name") for c in suite.findall("testcase")]
    assert names == ["nrc1_noise <= 0.5", "nrc1_noise[-1] <= 0.2", "first_collapsed_index<=3"]
    failure = suite.find("testcase/failure")
    assert failure.get("type") == "RequirementFailed"
    assert failure.get("message") == "1 of 4 layers fails nrc1_noise <= 0.5: '0' 0.8104"
    assert re.search(r"^1 0: 0\.8104\d* FAIL$", failure.text, re.M)
    assert [p.name for p in junit.parent.iterdir()] == ["nrc.xml"]


# ------------------------------------------------------- docs/ci-gates.md "Use in CI", as written


def doc_blocks() -> list[tuple[str, str]]:
    """Fenced blocks of docs/ci-gates.md, the page "Use in CI"."""
    text = DOCS.read_text(encoding="utf-8")
    assert text.startswith("# Use in CI\n")
    return re.findall(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M)


def nrc_lines(block: str) -> list[list[str]]:
    """The ``nrc …`` command lines of a shell or YAML block, as argument lists."""
    commands = []
    for line in block.splitlines():
        line = re.sub(r"^\s*(?:- )?(?:run: )?", "", line)
        if line.startswith("nrc "):
            commands.append(shlex.split(line)[1:])
    return commands


def block(marker: str) -> str:
    found = [body for _, body in doc_blocks() if marker in body]
    assert len(found) == 1, marker
    return found[0]


def run_all(commands: list[list[str]]) -> list[object]:
    return [runner.invoke(app, args) for args in commands]


def test_docs_commands_run_as_written(tmp_path, monkeypatch):
    # In a fresh clone: the samples, and no baselines/ folder until the page makes one.
    if not (SAMPLES / "mlp_wd.safetensors").exists():
        pytest.skip("sample_checkpoints/ not generated (scripts/make_samples.py)")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(SAMPLES, tmp_path / "sample_checkpoints")

    bash = [b for lang, b in doc_blocks() if lang == "bash"]
    setup = bash[0]
    github = block(".github/workflows/nrc.yml")
    gitlab = block(".gitlab-ci.yml")
    gates_toml = block("# nrc-gates.toml")
    assert "mikepenz/action-junit-report" in github and "report_paths: nrc-junit.xml" in github
    assert "junit: nrc-junit.xml" in gitlab
    assert "pip install ." in github and "pip install ." in gitlab

    for line in setup.splitlines():
        if line.startswith("mkdir "):
            subprocess.run(["bash", "-e", "-c", line], check=True)
    for result in run_all(nrc_lines(setup)):
        assert result.exit_code == 0, result.stderr
    assert (tmp_path / "baselines" / "model.json").is_file()

    for job in (github, gitlab):
        commands = nrc_lines(job)
        assert [c[0] for c in commands] == ["analyze", "check"]
        assert commands[1].count("--require") == 2 and "--baseline" in commands[1]
        results = run_all(commands)
        assert [r.exit_code for r in results] == [0, 0], [r.stderr for r in results]
        assert last_line(results[1].stdout) == "11 passed, 0 failed"
        suite = ET.parse(tmp_path / "nrc-junit.xml").getroot().find("testsuite")
        assert (suite.get("tests"), suite.get("failures")) == ("11", "0")
        (tmp_path / "nrc-junit.xml").unlink()

    # The same gate on the model trained without weight decay: it fails, and says why.
    failing = [b for b in bash[1:] if "mlp_nowd" in b]
    assert len(failing) == 1
    analyzed, gated = run_all(nrc_lines(failing[0]))
    assert analyzed.exit_code == 0 and gated.exit_code == 1
    assert last_line(gated.stdout) == "1 passed, 10 failed"
    suite = ET.parse(tmp_path / "nrc-junit.xml").getroot().find("testsuite")
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed[:3] == [
        "nrc1_noise[-1] <= 0.05",
        "first_collapsed_index <= 3",
        "baseline: nrc1_noise",
    ]

    (tmp_path / "nrc-gates.toml").write_text(gates_toml)
    rest = [c for b in bash[1:] if b is not failing[0] for c in nrc_lines(b)]
    assert [c[0] for c in rest] == ["check", "compare"]
    gate_file, compare = run_all(rest)
    assert gate_file.exit_code == 1, gate_file.stderr  # the report is still the failing model's
    assert compare.exit_code == 0, compare.stderr


def test_a_saved_report_repeats_the_warnings_of_its_analysis(tmp_path):
    out = analyze(RELU / "model.safetensors", RELU / "data.npz", tmp_path / "assumed.json")
    fresh = nrc("check", RELU / "model.safetensors", "--data", RELU / "data.npz", "-r", "rank>=1")
    saved = nrc("check", "--report", out, "-r", "rank>=1")
    assert fresh.exit_code == saved.exit_code == 0
    (line,) = saved.stderr.splitlines()
    assert line.startswith("warning: the MLP was rebuilt from its tensors with activation relu")
    assert fresh.stderr == saved.stderr
