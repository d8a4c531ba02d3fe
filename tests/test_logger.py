"""`logger`: the original API, output formats, environment variables and rank reduction."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import run_ranks

from guided_diffusion import logger
from guided_diffusion.runtime.errors import UserError


@pytest.fixture(autouse=True)
def _fresh_logger():
    logger.reset()
    yield
    logger.reset()


def test_kv_formats_and_running_means(tmp_path, capsys):
    logger.configure(dir=str(tmp_path), format_strs=["stdout", "log", "csv", "json"])
    logger.logkv("step", 0)
    logger.logkv_mean("loss", 1.0)
    logger.logkv_mean("loss", torch.tensor(3.0))
    logger.logkv_mean("mse", 2.0, count=3)
    logger.logkv_mean("mse", 6.0, count=1)
    dumped = logger.dumpkvs()
    assert dumped == {"step": 0, "loss": 2.0, "mse": 3.0}
    logger.logkv("step", 1)
    logger.logkv("loss", 5.0)
    logger.logkv("grad_norm", 0.5)  # a new key widens the csv
    logger.log("hello", 42)
    logger.dumpkvs()

    out = capsys.readouterr().out
    assert "| loss " in out and "hello 42" in out
    with open(tmp_path / "progress.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["0", "1"]
    assert rows[0]["grad_norm"] == "" and float(rows[1]["grad_norm"]) == 0.5
    assert float(rows[0]["loss"]) == 2.0 and float(rows[1]["loss"]) == 5.0
    records = [json.loads(line) for line in (tmp_path / "progress.json").read_text().splitlines()]
    assert records[1] == {"grad_norm": 0.5, "loss": 5.0, "step": 1}
    text = (tmp_path / "log.txt").read_text()
    assert "hello 42" in text and "Logging to" in text
    assert logger.get_dir() == str(tmp_path)
    assert logger.getkvs() == {}


def test_environment_chooses_directory_and_formats(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "run"))
    monkeypatch.setenv("OPENAI_LOG_FORMAT", "csv")
    logger.configure()
    logger.logkv("a", 1)
    logger.dumpkvs()
    assert logger.get_dir() == str(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["progress.csv"]


def test_unknown_format_and_missing_tensorboard_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="unknown log format 'bogus'"):
        logger.configure(dir=str(tmp_path), format_strs=["bogus"])
    try:
        import tensorboard  # noqa: F401 - probe: is the optional dependency installed
    except ImportError:
        with pytest.raises(UserError, match="pip install tensorboard"):
            logger.configure(dir=str(tmp_path), format_strs=["tensorboard"])


REDUCE_SCRIPT = """
import sys, torch.distributed as dist
from guided_diffusion import dist_util, logger
dist_util.setup_dist()
rank = dist.get_rank()
logger.configure(format_strs=["csv", "log"])
logger.logkv_mean("loss", 1.0 + rank, count=1 + 2 * rank)   # rank 0: 1.0 x1, rank 1: 2.0 x3
logger.logkv("step", 7)
if rank == 1:
    logger.logkv_mean("only_rank1", 4.0)
print("DIR", logger.get_dir(), "VALUES", sorted(logger.dumpkvs().items()))
"""


def test_metrics_are_averaged_over_ranks_and_ranks_share_the_default_dir():
    ranks = run_ranks(REDUCE_SCRIPT)
    for returncode, _, err in ranks:
        assert returncode == 0, err
    outputs = [(out, err) for _, out, err in ranks]
    lines = [next(line for line in out.splitlines() if line.startswith("DIR")) for out, _ in outputs]
    dirs = {line.split()[1] for line in lines}
    assert len(dirs) == 1  # rank 0 chose, everyone writes there
    # (1*1 + 2*3) / 4 = 1.75 on every rank; a key logged by one rank keeps its value.
    expected = "VALUES [('loss', 1.75), ('only_rank1', 4.0), ('step', 7)]"
    assert all(line.endswith(expected) for line in lines), lines
    run_dir = dirs.pop()
    with open(f"{run_dir}/progress.csv", newline="") as handle:
        assert float(next(csv.DictReader(handle))["loss"]) == 1.75
    import os

    assert os.path.exists(f"{run_dir}/log-rank001.txt")


def test_logging_without_configure_uses_defaults(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "implicit"))
    monkeypatch.delenv("OPENAI_LOG_FORMAT", raising=False)
    logger.logkv("x", 3)
    logger.dumpkvs()
    assert "| x " in capsys.readouterr().out
    assert logger.get_dir() == str(tmp_path / "implicit")
    assert (tmp_path / "implicit" / "progress.csv").is_file() and (tmp_path / "implicit" / "log.txt").is_file()
