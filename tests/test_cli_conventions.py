"""One command-line convention (issue 20 items 19, 24) for `report` and `guided-diffusion --version`:
a bad flag is one line, no abbreviations, --out_dir, and a report whose command line pastes back."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from helpers import error_of

import guided_diffusion
from guided_diffusion.cli import main
from guided_diffusion.config import DiffusionConfig, ModelConfig, config_to_dict
from guided_diffusion.weights.checkpoints import write_config_json

pytest.importorskip("matplotlib")


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"guided-diffusion {guided_diffusion.__version__}"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A training run directory as the report reads it: progress.csv and config.json (with an empty
    attention_resolutions, as the tiny runs have)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "progress.csv").write_text("step,loss,lr\n10,0.50,0.0001\n20,0.40,0.0001\n")
    model = ModelConfig(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1", attention_resolutions="")
    write_config_json(run, config_to_dict(model, DiffusionConfig()))
    return run


@pytest.mark.parametrize("typo", [["--outt", "x"], ["--max_row", "3"], ["--out_d", "x"]])
def test_report_misspelled_or_abbreviated_flag_is_one_line(typo, run_dir, capsys):
    message = error_of(capsys, ["report", str(run_dir), *typo])
    assert f"unrecognized arguments: {typo[0]}" in message and "(see `guided-diffusion report --help`)" in message


def test_report_out_dir_and_the_former_out(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--out_dir", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "report.md").is_file() and not (run_dir / "report.md").exists()
    capsys.readouterr()
    assert main(["report", str(run_dir), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "report.md").is_file()
    assert "--out is now spelled --out_dir" in capsys.readouterr().err
    error_of(capsys, ["report", str(run_dir), "--out", str(tmp_path / "c"), "--out_dir", str(tmp_path / "d")])


def test_report_model_flags_paste_back_with_empty_values(run_dir, capsys):
    from guided_diffusion.cli.train import build_parser

    assert main(["report", str(run_dir)]) == 0
    line = next(line for line in (run_dir / "report.md").read_text().splitlines() if line.startswith("Model (unet): `"))
    flags = shlex.split(line.split("`")[1])
    parsed = build_parser("image_train").parse_args(flags)
    assert parsed.attention_resolutions == "" and parsed.channel_mult == "1" and parsed.num_channels == 32


def test_report_help_shows_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--help"])
    assert exit_.value.code == 0
    assert "steps shown in a samples-over-time grid (default: 8)" in capsys.readouterr().out
