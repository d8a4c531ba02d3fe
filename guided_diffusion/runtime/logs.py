"""Key-value and text logger with the original `logger` API (`configure`, `log`, `logkv`,
`logkv_mean`, `dumpkvs`, `get_dir`).

Metrics accumulate between `dumpkvs()` calls and are written to every configured output: `stdout`,
`log` (log.txt), `csv` (progress.csv), `json` (progress.json) and `tensorboard` (tb/, needs the
`tensorboard` package). When several ranks run, `dumpkvs()` averages each metric over ranks
(weighted by how many values each rank recorded), so every rank must call it.

Environment: `OPENAI_LOGDIR` (directory), `OPENAI_LOG_FORMAT` (formats on rank 0, default
`stdout,log,csv`), `OPENAI_LOG_FORMAT_MPI` (formats on other ranks, default `log`).
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, TextIO

DEBUG = 10
INFO = 20
WARN = 30
ERROR = 40
DISABLED = 50


# ---------------------------------------------------------------------------------------------
# Output formats


class OutputFormat:
    """One destination for dumped metrics and/or text lines."""

    def write_kvs(self, kvs: dict[str, Any], step: int) -> None:
        return None

    def write_text(self, text: str) -> None:
        return None

    def close(self) -> None:
        return None


def _display(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:<8.3g}"
    return str(value)


def _clip(text: str, width: int = 30) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


class HumanOutputFormat(OutputFormat):
    """A boxed key/value table per dump, plus text lines (stdout or log.txt)."""

    def __init__(self, target: str | TextIO):
        # Standard output is looked up at every write, not kept: a logger configured by one command (in a
        # process that runs several, a test session or a notebook) must not write to a stdout since replaced.
        self._follows_stdout = target is sys.stdout
        if isinstance(target, str):
            self._file: TextIO = open(target, "a", encoding="utf-8")
            self._owns_file = True
        else:
            self._file = target
            self._owns_file = False

    @property
    def file(self) -> TextIO:
        return sys.stdout if self._follows_stdout else self._file

    def write_kvs(self, kvs: dict[str, Any], step: int) -> None:
        if not kvs:
            return
        rows = [(_clip(str(key)), _clip(_display(value))) for key, value in sorted(kvs.items())]
        key_width = max(len(key) for key, _ in rows)
        value_width = max(len(value) for _, value in rows)
        rule = "-" * (key_width + value_width + 7)
        lines = [rule]
        lines += [f"| {key:<{key_width}} | {value:<{value_width}} |" for key, value in rows]
        lines.append(rule)
        self.file.write("\n".join(lines) + "\n")
        self.file.flush()

    def write_text(self, text: str) -> None:
        self.file.write(text + "\n")
        self.file.flush()

    def close(self) -> None:
        if self._owns_file:
            self._file.close()


class JSONOutputFormat(OutputFormat):
    """One JSON object per dump (progress.json)."""

    def __init__(self, path: str):
        self.file = open(path, "a", encoding="utf-8")

    def write_kvs(self, kvs: dict[str, Any], step: int) -> None:
        record = {key: (float(value) if hasattr(value, "dtype") else value) for key, value in sorted(kvs.items())}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class CSVOutputFormat(OutputFormat):
    """progress.csv; when a new key appears the file is rewritten with the wider header."""

    def __init__(self, path: str):
        self.path = path
        self.keys: list[str] = []
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
            self.keys = list(header)

    def write_kvs(self, kvs: dict[str, Any], step: int) -> None:
        new_keys = sorted(key for key in kvs if key not in self.keys)
        if new_keys:
            rows: list[dict[str, str]] = []
            if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
                with open(self.path, newline="", encoding="utf-8") as handle:
                    rows = list(csv.DictReader(handle))
            self.keys.extend(new_keys)
            with open(self.path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.keys, restval="")
                writer.writeheader()
                writer.writerows(rows)
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.keys, restval="")
            writer.writerow({key: kvs[key] for key in self.keys if key in kvs})


class TensorBoardOutputFormat(OutputFormat):
    """Scalars in a TensorBoard event file under tb/ (needs the `tensorboard` package)."""

    def __init__(self, directory: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            from guided_diffusion.runtime.errors import UserError

            raise UserError(
                "the tensorboard log format needs the tensorboard package: `pip install tensorboard`, "
                "or drop tensorboard from OPENAI_LOG_FORMAT"
            ) from exc
        self.writer = SummaryWriter(log_dir=directory)
        self._fallback_step = 0

    def write_kvs(self, kvs: dict[str, Any], step: int) -> None:
        self._fallback_step += 1
        global_step = step if step >= 0 else self._fallback_step
        for key, value in kvs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_output_format(name: str, directory: str, suffix: str = "") -> OutputFormat:
    """Build the output called `name` (stdout, log, json, csv, tensorboard) writing into `directory`."""
    os.makedirs(directory, exist_ok=True)
    if name == "stdout":
        return HumanOutputFormat(sys.stdout)
    if name == "log":
        return HumanOutputFormat(os.path.join(directory, f"log{suffix}.txt"))
    if name == "json":
        return JSONOutputFormat(os.path.join(directory, f"progress{suffix}.json"))
    if name == "csv":
        return CSVOutputFormat(os.path.join(directory, f"progress{suffix}.csv"))
    if name in ("tensorboard", "tb"):
        return TensorBoardOutputFormat(os.path.join(directory, f"tb{suffix}"))
    from guided_diffusion.runtime.errors import UserError

    raise UserError(f"unknown log format {name!r}: choose from stdout, log, csv, json, tensorboard")


# ---------------------------------------------------------------------------------------------
# Rank reduction


def _dist_world() -> tuple[int, int]:
    """(rank, world) of a running torch.distributed group, else (0, 1)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_from_env() -> int:
    from guided_diffusion.runtime.distributed import int_from_env

    return int_from_env(("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"), 0)


def _logging_rank() -> int:
    """The torch.distributed rank when a group runs, else the launcher's rank variable."""
    rank, world = _dist_world()
    return rank if world > 1 else _rank_from_env()


def _reduce_over_ranks(values: dict[str, Any], counts: dict[str, float]) -> dict[str, Any]:
    """Average numeric metrics over ranks, weighting each rank by its count of values."""
    rank, world = _dist_world()
    if world <= 1:
        return values
    import torch.distributed as dist

    local = {key: (value, counts.get(key, 1.0)) for key, value in values.items()}
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    reduced: dict[str, Any] = {}
    for key in sorted(set().union(*(g.keys() for g in gathered))):
        pairs = [g[key] for g in gathered if key in g]
        numeric = [(v, c) for v, c in pairs if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if all(v == pairs[0][0] for v, _ in pairs):
            reduced[key] = values.get(key, pairs[0][0])  # agreed values (e.g. step) keep their type
        elif len(numeric) == len(pairs) and sum(c for _, c in numeric) > 0:
            total = sum(c for _, c in numeric)
            reduced[key] = sum(float(v) * c for v, c in numeric) / total
        else:
            reduced[key] = values.get(key, pairs[0][0])
    return reduced


# ---------------------------------------------------------------------------------------------
# Logger


def _to_number(value: Any) -> Any:
    """Plain Python numbers for tensors and numpy scalars (one value only)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "item") and hasattr(value, "numel") and value.numel() == 1:
        return value.item()
    return value


class Logger:
    """Accumulates metrics and text and writes them to its output formats."""

    def __init__(self, directory: str, output_formats: list[OutputFormat], reduce_over_ranks: bool = True):
        self.dir = directory
        self.output_formats = output_formats
        self.reduce_over_ranks = reduce_over_ranks
        self.level = INFO
        self.name2val: dict[str, Any] = {}
        self.name2cnt: dict[str, float] = defaultdict(float)
        self.step = -1

    def logkv(self, key: str, value: Any) -> None:
        self.name2val[key] = _to_number(value)
        self.name2cnt[key] = 1.0

    def logkv_mean(self, key: str, value: Any, count: float = 1.0) -> None:
        value = float(_to_number(value))
        if count <= 0:
            return
        old_value, old_count = self.name2val.get(key, 0.0), self.name2cnt.get(key, 0.0)
        if not isinstance(old_value, (int, float)):
            old_value, old_count = 0.0, 0.0
        total = old_count + count
        self.name2val[key] = old_value * (old_count / total) + value * (count / total)
        self.name2cnt[key] = total

    def dumpkvs(self) -> dict[str, Any]:
        values = dict(self.name2val)
        if self.reduce_over_ranks:
            values = _reduce_over_ranks(values, dict(self.name2cnt))
        if not values:  # nothing recorded (on any rank): no empty rows
            return values
        step = values.get("step", -1)
        step = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else -1
        for fmt in self.output_formats:
            fmt.write_kvs(values, step)
        self.name2val.clear()
        self.name2cnt.clear()
        return values

    def log(self, *args: Any, level: int = INFO) -> None:
        if self.level <= level:
            text = " ".join(map(str, args))
            for fmt in self.output_formats:
                fmt.write_text(text)

    def set_level(self, level: int) -> None:
        self.level = level

    def get_dir(self) -> str:
        return self.dir

    def close(self) -> None:
        for fmt in self.output_formats:
            fmt.close()


_CURRENT: Logger | None = None


def _default_dir() -> str:
    stamp = datetime.datetime.now().strftime("openai-%Y-%m-%d-%H-%M-%S-%f")
    return os.path.join(tempfile.gettempdir(), stamp)


def _shared_default_dir() -> str:
    """A fresh directory name that every rank agrees on (rank 0 chooses)."""
    rank, world = _dist_world()
    choice = _default_dir()
    if world > 1:
        import torch.distributed as dist

        box = [choice if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        choice = str(box[0])
    return choice


def configure(dir: str | None = None, format_strs: list[str] | None = None, comm: Any = None, log_suffix: str = "") -> Logger:
    """Set up the global logger: directory `dir` (else `$OPENAI_LOGDIR`, else a fresh temp dir that
    all ranks share) and formats `format_strs` (else `$OPENAI_LOG_FORMAT`). `comm` is accepted for
    compatibility; ranks come from torch.distributed. With several ranks, every rank must call it."""
    del comm
    directory = dir or os.environ.get("OPENAI_LOGDIR") or _shared_default_dir()
    return _configure_in(directory, format_strs, log_suffix)


def _configure_in(directory: str, format_strs: list[str] | None, log_suffix: str = "") -> Logger:
    global _CURRENT
    directory = os.path.expanduser(directory)
    os.makedirs(directory, exist_ok=True)
    rank = _logging_rank()
    if rank > 0:
        log_suffix = f"{log_suffix}-rank{rank:03d}"
    if format_strs is None:
        env = os.environ.get("OPENAI_LOG_FORMAT", "stdout,log,csv") if rank == 0 else os.environ.get("OPENAI_LOG_FORMAT_MPI", "log")
        format_strs = [part for part in env.split(",") if part]
    formats = [make_output_format(name, directory, log_suffix) for name in format_strs]
    if _CURRENT is not None:
        _CURRENT.close()
    _CURRENT = Logger(directory, formats)
    if format_strs:
        _CURRENT.log(f"Logging to {directory}")
    return _CURRENT


def get_current() -> Logger:
    """The global logger, configured with defaults on first use."""
    if _CURRENT is None:
        # Implicit configuration happens on one rank at a time, so no collective here.
        _configure_in(os.environ.get("OPENAI_LOGDIR") or _default_dir(), None)
    assert _CURRENT is not None
    return _CURRENT


def reset() -> None:
    """Close the global logger's outputs and forget it."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.close()
    _CURRENT = None


@contextlib.contextmanager
def scoped_configure(dir: str | None = None, format_strs: list[str] | None = None) -> Iterator[Logger]:
    """Use a differently configured logger inside a `with` block."""
    global _CURRENT
    previous = _CURRENT
    _CURRENT = None
    logger = configure(dir=dir, format_strs=format_strs)
    try:
        yield logger
    finally:
        logger.close()
        _CURRENT = previous


def logkv(key: str, val: Any) -> None:
    """Record `val` under `key` for the next dump (overwrites)."""
    get_current().logkv(key, val)


def logkv_mean(key: str, val: Any, count: float = 1.0) -> None:
    """Fold `val` (the mean of `count` observations) into the running mean of `key`."""
    get_current().logkv_mean(key, val, count)


def logkvs(d: dict[str, Any]) -> None:
    """`logkv` for every item of `d`."""
    for key, value in d.items():
        logkv(key, value)


def dumpkvs() -> dict[str, Any]:
    """Write the recorded metrics (averaged over ranks) and clear them; returns what was written."""
    return get_current().dumpkvs()


def getkvs() -> dict[str, Any]:
    """The metrics recorded since the last dump (local to this rank)."""
    return dict(get_current().name2val)


def log(*args: Any, level: int = INFO) -> None:
    """Write a text line to the outputs that take text (stdout, log.txt)."""
    get_current().log(*args, level=level)


def debug(*args: Any) -> None:
    log(*args, level=DEBUG)


def info(*args: Any) -> None:
    log(*args, level=INFO)


def warn(*args: Any) -> None:
    log(*args, level=WARN)


def error(*args: Any) -> None:
    log(*args, level=ERROR)


def set_level(level: int) -> None:
    """Drop text lines below `level`."""
    get_current().set_level(level)


def get_dir() -> str:
    """The directory logs and checkpoints go to."""
    return get_current().get_dir()


record_tabular = logkv
dump_tabular = dumpkvs


@contextlib.contextmanager
def profile_kv(scope_name: str) -> Iterator[None]:
    """Add the wall time spent in the block to the metric `wait_{scope_name}`."""
    key = "wait_" + scope_name
    start = time.time()
    try:
        yield
    finally:
        current = get_current()
        current.name2val[key] = current.name2val.get(key, 0.0) + (time.time() - start)


# ---------------------------------------------------------------------------------------------
# Progress of long loops


def log_to_files(text: str) -> None:
    """Write a text line to the configured logger's files (log.txt) only, not to stdout. Nothing
    happens when no logger is configured (this never creates a run directory)."""
    if _CURRENT is None:
        return
    for fmt in _CURRENT.output_formats:
        if isinstance(fmt, HumanOutputFormat) and fmt._owns_file:
            fmt.write_text(text)


def clock_text(seconds: float) -> str:
    """Seconds as M:SS or H:MM:SS (rounded down to whole seconds)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressReporter:
    """Progress of a loop of `total` units (None: no end known) for a person watching.

    In a terminal (stderr is a tty) a tqdm bar on stderr. Outside one (nohup, a scheduler, `| tee`) a
    plain line on stderr whenever another `every_fraction` of the total is done or `every_seconds`
    passed since the last line: "label: 300/1000 steps (30%), elapsed 1:05, ETA 2:31, loss 0.031".
    The plain lines also go to the configured logger's log.txt, in both cases, so the log never holds
    cursor codes. `progress` is the `--progress` value: False reports nothing; True or None (the
    default) report as above. `initial` units were done before (a resumed run); the ETA uses the
    rate of this process only. `set_postfix` adds fields to the bar and to the lines.
    """

    def __init__(self, total: int | None, what: str, *, progress: bool | None = None, label: str = "",
                 initial: int = 0, every_fraction: float = 0.1, every_seconds: float = 30.0,
                 terminal: bool | None = None, clock: Any = time.monotonic):
        self.total = total
        self.what = what
        self.label = label
        self.done = initial
        self.enabled = progress is not False
        self.every_fraction = every_fraction
        self.every_seconds = every_seconds
        self._clock = clock
        self._start = clock()
        self._initial = initial
        self._last_line_time = self._start
        self._last_line_done = initial
        self._next_fraction = self._fraction_after(initial)
        self._postfix: dict[str, Any] = {}
        on_terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar: Any = None
        if self.enabled and on_terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label or None, unit=what.rstrip("s") or what,
                             dynamic_ncols=True, mininterval=1.0)

    def _fraction_after(self, done: int) -> int | None:
        """The next unit count at which a whole `every_fraction` of the total is reached."""
        if not self.total or self.every_fraction <= 0:
            return None
        step = self.total * self.every_fraction
        return min(self.total, int((done // step + 1) * step + 0.999999))

    def line(self) -> str:
        """The plain progress line as of now."""
        elapsed = self._clock() - self._start
        head = f"{self.label}: " if self.label else ""
        if self.total:
            text = f"{head}{self.done}/{self.total} {self.what} ({100 * self.done // self.total}%), elapsed {clock_text(elapsed)}"
            rate_done = self.done - self._initial
            if 0 < rate_done and self.done < self.total:
                text += f", ETA {clock_text(elapsed / rate_done * (self.total - self.done))}"
        else:
            text = f"{head}{self.done} {self.what}, elapsed {clock_text(elapsed)}"
        extra = ", ".join(f"{key} {value}" for key, value in self._postfix.items())
        return f"{text}, {extra}" if extra else text

    def _emit(self) -> None:
        text = self.line()
        if self._bar is None:
            print(text, file=sys.stderr, flush=True)
        log_to_files(text)
        self._last_line_time = self._clock()
        self._last_line_done = self.done
        self._next_fraction = self._fraction_after(self.done)

    def update(self, n: int = 1) -> None:
        """`n` more units are done."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        due_fraction = self._next_fraction is not None and self.done >= self._next_fraction
        if due_fraction or self._clock() - self._last_line_time >= self.every_seconds:
            self._emit()

    def set_postfix(self, fields: dict[str, Any]) -> None:
        """Fields shown after the counts (replacing the previous ones)."""
        self._postfix = dict(fields)
        if self._bar is not None:
            self._bar.set_postfix(self._postfix, refresh=False)

    def external_write(self) -> contextlib.AbstractContextManager:
        """A context in which other text may be printed without breaking the bar."""
        if self._bar is None:
            return contextlib.nullcontext()
        return self._bar.external_write_mode()

    def close(self, line: bool = True) -> None:
        """End the bar; a last plain line when units were done since the previous one (and `line`)."""
        if self.enabled and line and self.done != self._last_line_done:
            self._emit()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.enabled = False

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
