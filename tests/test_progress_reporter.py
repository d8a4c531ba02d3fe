"""runtime.logs.ProgressReporter: plain lines outside a terminal (every 10% or 30 s, with done/total,
elapsed and ETA, also in log.txt), a tqdm bar in one, and never cursor codes in log.txt."""
from __future__ import annotations

import pytest

from guided_diffusion.runtime import logs
from guided_diffusion.runtime.logs import ProgressReporter, clock_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def run_log(tmp_path):
    logs.configure(str(tmp_path), format_strs=["log"])
    yield tmp_path / "log.txt"
    logs.reset()


def test_clock_text():
    assert clock_text(5.9) == "0:05"
    assert clock_text(65) == "1:05"
    assert clock_text(3723) == "1:02:03"


def test_outside_a_terminal_a_line_every_tenth_with_elapsed_and_eta(capsys, run_log):
    clock = FakeClock()
    reporter = ProgressReporter(100, "steps", label="training", terminal=False, clock=clock)
    for _ in range(100):
        clock.now += 1.0
        reporter.update()
    reporter.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10, lines
    assert lines[0] == "training: 10/100 steps (10%), elapsed 0:10, ETA 1:30"
    assert lines[-1] == "training: 100/100 steps (100%), elapsed 1:40"
    assert run_log.read_text().splitlines()[1:] == lines  # after "Logging to"


def test_a_line_every_30_seconds_when_tenths_are_slow(capsys):
    clock = FakeClock()
    reporter = ProgressReporter(1000, "images", terminal=False, clock=clock)
    for _ in range(3):
        clock.now += 20.0
        reporter.update()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["2/1000 images (0%), elapsed 0:40, ETA 5:32:40"]


def test_no_end_known_and_postfix(capsys):
    clock = FakeClock()
    reporter = ProgressReporter(None, "steps", terminal=False, clock=clock, initial=50)
    reporter.set_postfix({"loss": "0.031"})
    clock.now = 31.0
    reporter.update(5)
    assert capsys.readouterr().err.splitlines() == ["55 steps, elapsed 0:31, loss 0.031"]


def test_resumed_run_counts_its_own_rate(capsys):
    clock = FakeClock()
    reporter = ProgressReporter(100, "steps", terminal=False, clock=clock, initial=50)
    for _ in range(10):
        clock.now += 2.0
        reporter.update()
    assert capsys.readouterr().err.splitlines() == ["60/100 steps (60%), elapsed 0:20, ETA 1:20"]


def test_progress_false_reports_nothing(capsys, run_log):
    reporter = ProgressReporter(10, "steps", progress=False, terminal=False)
    for _ in range(10):
        reporter.update()
    reporter.close()
    assert capsys.readouterr().err == ""
    assert "steps" not in run_log.read_text()


def test_in_a_terminal_a_bar_on_stderr_and_plain_lines_in_log_txt(capsys, run_log):
    clock = FakeClock()
    reporter = ProgressReporter(20, "steps", terminal=True, clock=clock)
    for _ in range(20):
        clock.now += 1.0
        reporter.update()
    reporter.close()
    err = capsys.readouterr().err
    assert "\r" in err  # tqdm's bar
    log = run_log.read_text()
    assert "\r" not in log and "\x1b" not in log
    assert "20/20 steps (100%), elapsed 0:20" in log.splitlines()
