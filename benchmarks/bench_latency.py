"""Keypress-to-screen latency of the app while it merges, measured in a real pseudo-terminal.

Starts `mergetui open RECIPE --screen run` in a pty (100x30, xterm-256color), exactly as a person
would in a terminal, presses `r` to merge the ~245M-parameter benchmark checkpoints
(bench_merge.make_checkpoints: a Llama base and two fine-tunes, bf16), and while the merge runs
presses F3 / F4 (Recipe / Run screen) in turn. The latency of one key is the time from writing its
bytes to the pty until the terminal has received the new screen (a text only the target screen
shows). The same keys are timed with the app idle, before the merge, for comparison. A merge that
ends before enough keys were timed is run again (its output removed first).

    python benchmarks/bench_latency.py                   # ties of 3 models, 40 keys while merging
    python benchmarks/bench_latency.py --method linear --keys 60 --json out.json

Target (issue 6): median under 100 ms on this machine. Timing lives here, never in the unit tests.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import pty
import re
import select
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_merge import SHAPE, WORK, make_checkpoints  # noqa: E402

KEYS = {"f3": b"\x1bOR", "f4": b"\x1bOS", "f6": b"\x1b[17~", "f7": b"\x1b[18~", "r": b"r"}
KEYS["ctrl+q"] = b"\x11"
# Two probes. "screens": F3 / F4 switch between the Recipe and Run screens (the whole screen is
# rebuilt and redrawn). "tabs": F7 / F6 switch the Run screen's History and Log tabs (a part of the
# screen). A key's new screen has arrived when a text only its target draws has been received.
PROBES = {
    "screens": {"f3": b"Setup", "f4": b"History"},
    "tabs": {"f7": b"outcome", "f6": b"merging on"},
}
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>O]")

RECIPES = {
    "ties": """
[merge]
method = "ties"
base = "base"
dtype = "bfloat16"
output = "{out}"

[models.base]
source = "{base}"

[models.ft-a]
source = "{a}"
[models.ft-a.parameters]
density = 0.5
weight = 0.5

[models.ft-b]
source = "{b}"
[models.ft-b.parameters]
density = 0.5
weight = 0.5

[parameters]
normalize = true
""",
    "linear": """
[merge]
method = "linear"
dtype = "bfloat16"
output = "{out}"

[models.base]
source = "{base}"
[models.base.parameters]
weight = 0.4

[models.ft-a]
source = "{a}"
[models.ft-a.parameters]
weight = 0.3

[models.ft-b]
source = "{b}"
[models.ft-b.parameters]
weight = 0.3
""",
}


class Terminal:
    """A child process on a pty, and everything it has written, with arrival times."""

    def __init__(self, argv: list[str], env: dict[str, str], size: tuple[int, int]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become the app
            os.execvpe(argv[0], argv, env)
        cols, rows = size
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.lock = threading.Lock()
        self.chunks: list[tuple[float, bytes]] = []
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.5)
                if not ready:
                    if self.closed:
                        return
                    continue
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.chunks.append((time.perf_counter(), data))

    def mark(self) -> int:
        with self.lock:
            return len(self.chunks)

    def text_since(self, index: int) -> bytes:
        with self.lock:
            return b"".join(data for _, data in self.chunks[index:])

    def wait_for(self, marker: bytes, since: int, timeout: float) -> float | None:
        """Arrival time of the chunk that completes `marker` (after chunk `since`), or None."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                chunks = self.chunks[since:]
            seen = b""
            for arrived, data in chunks:
                seen += data
                if marker in seen or marker in _ANSI.sub(b"", seen):
                    return arrived
            time.sleep(0.002)
        return None

    def press(self, key: str) -> tuple[int, float]:
        index = self.mark()
        sent = time.perf_counter()
        os.write(self.fd, KEYS[key])
        return index, sent

    def close(self) -> None:
        self.closed = True
        try:
            os.kill(self.pid, signal.SIGTERM)
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        os.close(self.fd)


def time_keys(
    term: Terminal, probe: str, count: int, keep_going, state: dict
) -> list[tuple[str, float]]:
    """Alternate the probe's two keys, `count` times at most while `keep_going()`; (key, ms)."""
    markers = PROBES[probe]
    first, second = markers
    samples: list[tuple[str, float]] = []
    for _ in range(count):
        if not keep_going():
            break
        key = first if state.get(probe) != first else second
        index, sent = term.press(key)
        arrived = term.wait_for(markers[key], index, timeout=10)
        if arrived is None:
            raise RuntimeError(f"no new screen 10 s after {key}")
        state[probe] = key
        if key in ("f3", "f4"):
            state["screen"] = key
        if keep_going():  # only keys answered while the merge was still running count
            samples.append((key, (arrived - sent) * 1000))
        time.sleep(0.1)  # a person's pace, and time for the next progress update
    return samples


def to_run_screen(term: Terminal, state: dict) -> None:
    if state.get("screen") != "f4":
        index, _ = term.press("f4")
        term.wait_for(PROBES["screens"]["f4"], index, timeout=10)
        state["screen"] = "f4"
        time.sleep(0.3)


def merge_and_time(term: Terminal, out: Path, probe: str, keys: int, runs: int, state: dict):
    """Merge (again and again, up to `runs`) and time the probe's keys while it runs."""
    samples: list[tuple[str, float]] = []
    walls: list[float] = []
    for _ in range(runs):
        if len(samples) >= keys:
            break
        shutil.rmtree(out, ignore_errors=True)
        to_run_screen(term, state)
        index, pressed = term.press("r")
        if term.wait_for(b"merging on", index, timeout=120) is None:
            raise RuntimeError("the merge did not start")
        samples += time_keys(term, probe, keys - len(samples), lambda: not out.exists(), state)
        deadline = time.time() + 900
        while not out.exists() and time.time() < deadline:
            time.sleep(0.1)
        walls.append(time.perf_counter() - pressed)
        time.sleep(1.0)
    return samples, walls


def summary(samples: list[tuple[str, float]]) -> dict:
    """Median, p95 and extremes in ms, and the median of each key (F3 and F4 differ in cost)."""
    ordered = sorted(ms for _, ms in samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    keys = sorted({key for key, _ in samples})
    return {
        "count": len(samples),
        "median_ms": statistics.median(ordered),
        "p95_ms": p95,
        "max_ms": ordered[-1],
        "min_ms": ordered[0],
        "median_ms_by_key": {
            key: statistics.median(ms for k, ms in samples if k == key) for key in keys
        },
    }


CALIBRATION_APP = """
from textual.app import App
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane


class Calibration(App):
    BINDINGS = [("f6", "tab('log')", "Log"), ("f7", "tab('history')", "History")]

    def compose(self):
        yield Header()
        with TabbedContent(initial="log"):
            with TabPane("Log", id="log"):
                yield Static("merging on cpu\\n" * 5)
            with TabPane("History", id="history"):
                yield Static("outcome\\n" * 5)
        yield Static("runs the merge")
        yield Footer()

    def action_tab(self, tab):
        self.query_one(TabbedContent).active = tab


Calibration().run()
"""


def calibrate(scratch: Path, env: dict[str, str], size: tuple[int, int], keys: int) -> dict:
    """The same probe on a bare Textual app with two tabs: what this machine gives at best now."""
    script = scratch / "calibration_app.py"
    script.write_text(CALIBRATION_APP, encoding="utf-8")
    term = Terminal([sys.executable, str(script)], env, size)
    try:
        if term.wait_for(b"runs the merge", 0, timeout=60) is None:
            raise RuntimeError("the calibration app did not start")
        time.sleep(1.0)
        return summary(time_keys(term, "tabs", keys, lambda: True, {}))
    finally:
        term.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(RECIPES), default="ties")
    parser.add_argument("--keys", type=int, default=40, help="keys to time while merging")
    parser.add_argument("--idle-keys", type=int, default=20, help="keys to time before merging")
    parser.add_argument("--max-merges", type=int, default=6)
    parser.add_argument("--size", default="100x30", help="terminal size, COLSxROWS")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--probes", default="screens,tabs", help="screens, tabs or both")
    args = parser.parse_args()

    print(f"checkpoints: {SHAPE} (bf16) in {WORK / 'models'}", flush=True)
    models = make_checkpoints(WORK / "models")
    scratch = Path(tempfile.mkdtemp(prefix="latency-", dir=WORK))
    out = scratch / "out"
    recipe = scratch / "recipe.toml"
    recipe.write_text(
        RECIPES[args.method].format(
            out=out, base=models["base"], a=models["ft-a"], b=models["ft-b"]
        ),
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
        "MERGETUI_DATA_DIR": str(scratch / "data"),
        "MERGETUI_CONFIG_DIR": str(scratch / "config"),
    }
    env.pop("TEXTUAL", None)
    cols, rows = (int(n) for n in args.size.split("x"))
    argv = [sys.executable, "-m", "mergetui", "open", str(recipe), "--screen", "run"]
    figures: dict[str, dict] = {
        "calibration_bare_textual_tabs": calibrate(scratch, env, (cols, rows), args.idle_keys)
    }
    term = Terminal(argv, env, (cols, rows))
    walls: list[float] = []
    try:
        start = term.mark()
        if term.wait_for(b"runs the merge", start, timeout=60) is None:
            text = term.text_since(0).decode(errors="replace")[-2000:]
            raise RuntimeError("the app did not start:\n" + text)
        time.sleep(1.0)
        state: dict = {"screen": "f4"}
        for probe in args.probes.split(","):
            to_run_screen(term, state)
            if probe == "tabs" and not walls:  # the Log tab needs a merge's lines to show
                _, first = merge_and_time(term, out, "screens", 0, 1, state)
                walls += first
            idle = time_keys(term, probe, args.idle_keys, lambda: True, state)
            busy, more = merge_and_time(term, out, probe, args.keys, args.max_merges, state)
            walls += more
            figures[probe] = {"idle": summary(idle), "merging": summary(busy) if busy else None}
        term.press("ctrl+q")
        time.sleep(1.0)
    finally:
        term.close()
        shutil.rmtree(scratch, ignore_errors=True)

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "terminal": f"{cols}x{rows} pty, xterm-256color",
        "method": args.method,
        "merges": len(walls),
        "merge_wall_s": [round(m, 2) for m in walls],
        **figures,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for probe, numbers in figures.items():
        if numbers.get("merging"):
            median = numbers["merging"]["median_ms"]
            verdict = "meets" if median < 100 else "MISSES"
            print(f"{probe}: median while merging {median:.1f} ms ({verdict} the 100 ms target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
