"""Follow a docs page as a reader would: one shell, real processes, output compared.

A page's session has its own folder (the repository's files linked in, its own `.data`,
its own temporary folder), its own ports and its own environment: nothing it starts touches
port 8000, the system Redis or the repository's `.data`. `make run` starts its own embedded
Valkey as it does for a reader. As in a reader's terminal, a `cd` holds for the commands
after it (the background ones too).

What a page shows and what came back differ in what differs from run to run: job ids,
times, durations, ports. The page's own values are bound to the real ones the first time
an output shows them (the job id in a POST's answer), and the commands after it are run
with the real ones, so a page that asks about a job it never created fails.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

from devkit import harness
from tests.helpers import poll
from tests.pages import ROOT, Step
from tests.processes import Proc, Processes, free_port

COMMAND_TIMEOUT_S = 120.0  # one foreground command; `make lint` on a busy machine is the slowest
POLL_DEADLINE_S = 30.0  # a `poll` command: a retried job, a deferred one coming due
START_DEADLINE_S = 60.0  # `make run` on a busy 2-core machine: Valkey, the API, a worker
STOP_DEADLINE_S = 30.0
# What a reader's fresh shell would not have: the test run's own settings and make's.
NOT_INHERITED = {
    *("REDIS_URL", "DATA_DIR", "DATABASE_URL", "FETCH_ALLOWLIST", "VIRTUAL_ENV"),
    *("STAGE", "PORT", "HOST", "WORKERS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"),
}
NOT_LINKED = {".data", ".git", "site", ".pytest_cache", ".ruff_cache", ".coverage"}

# Values that differ from run to run, and the pattern that matches any of them.
ID = r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])"
PORT = r"(?<=127\.0\.0\.1:)\d{2,5}\b|(?<=localhost:)\d{2,5}\b"
VARYING = {
    "iso": (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?",
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?"),
    "httpdate": (r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT",
                 r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"),
    "clock": (r"\b\d\d:\d\d:\d\d\b", r"\d\d:\d\d:\d\d"),
    "day": (r"\b[A-Z][a-z]{2}-\d\d\b", r"[A-Z][a-z]{2}-\d\d"),
    "cursor": (r"\b(?=[A-Za-z0-9+/=]{40,}\")[A-Za-z0-9+/]*[A-Z][A-Za-z0-9+/]*={0,2}(?=\")",
               r"[A-Za-z0-9+/=_-]+"),
    "duration": (r"\b\d+m\d+(?:\.\d+)?s\b|\b\d+(?:\.\d+)?s\b", r"\d+(?:m\d+)?(?:\.\d+)?s"),
}  # fmt: skip
# In a process's log, also a measured `name=<number>`: memory use, a delay.
LOG_ONLY = {"measure": (r"(?<==)\d+\.\d+[A-Za-z]*", r"\d+(?:\.\d+)?[A-Za-z]*")}
# Ports a command names: after 127.0.0.1: or localhost:, and in these options.
COMMAND_PORT = re.compile(
    r"(?:(?<=127\.0\.0\.1:)|(?<=localhost:)|(?<=--port )|(?<=PORT=)|(?<=http\.server ))(\d{2,5})\b"
)
ELIDED = {"...", "…"}


class Mismatch(AssertionError):
    pass


class Bindings:
    """The page's ids and ports, and the real ones they stand for in this run."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.ports: dict[str, str] = {}

    def command(self, command: str) -> str:
        """`command` with the page's ids and ports replaced by this run's."""
        for page_id in re.findall(ID, command):
            if page_id not in self.ids:
                raise Mismatch(f"the page uses job id {page_id} before any output showed it")
            command = command.replace(page_id, self.ids[page_id])

        command = COMMAND_PORT.sub(lambda match: self.port(match[1]), command)
        if re.search(r"\bmake run\b", command) and "PORT=" not in command:
            command += f" PORT={self.port('8000')}"  # make run's default port
        return command

    def port(self, page_port: str) -> str:
        if page_port not in self.ports:
            self.ports[page_port] = str(free_port())
        return self.ports[page_port]

    def pattern(self, expected: str, log: bool = False) -> tuple[re.Pattern[str], dict]:
        """A regex for `expected`, and which of its groups bind which page value."""
        kinds = {"id": (ID, None), "port": (PORT, None), **VARYING, **(LOG_ONLY if log else {})}
        alternatives = [f"(?P<{kind}>{pattern})" for kind, (pattern, _) in kinds.items()]
        token = re.compile("|".join([*alternatives, "…", r"\.\.\."]))
        groups: dict[str, tuple[str, str]] = {}
        lines = []
        for text in expected.splitlines():
            if text.strip() in ELIDED:
                lines.append(r"(?:[^\n]*\n)*?")
                continue
            out, last = [], 0
            for match in token.finditer(text):
                out.append(_literal(text[last : match.start()]))
                out.append(self._token(match, kinds, groups))
                last = match.end()
            out.append(_literal(text[last:]))
            lines.append("".join(out) + r"[ \t]*\n")
        return re.compile("".join(lines)), groups

    def _token(self, match: re.Match[str], kinds: dict, groups: dict) -> str:
        kind, value = match.lastgroup, match.group()
        if kind is None:
            return r"[^\n]*?"
        if kind not in ("id", "port"):
            return kinds[kind][1]
        known = (self.ids if kind == "id" else self.ports).get(value)
        if known is not None:
            return re.escape(known)
        for name, (seen_kind, seen) in groups.items():
            if (seen_kind, seen) == (kind, value):
                return f"(?P={name})"
        name = f"g{len(groups)}"
        groups[name] = (kind, value)
        return f"(?P<{name}>{'[0-9a-f]{32}' if kind == 'id' else '[0-9]+'})"

    def bind(self, match: re.Match[str], groups: dict) -> None:
        for name, (kind, value) in groups.items():
            (self.ids if kind == "id" else self.ports)[value] = match[name]


def _literal(text: str) -> str:
    return r"[ \t]+".join(re.escape(part) for part in re.split(r"[ \t]+", text))


def clean(output: str) -> str:
    """Terminal output as text: no carriage returns, no colours or links (curl's bold header
    names and hyperlinked `location`), no outer blank lines."""
    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)", "", output)
    output = output.replace("\r", "")
    return output.strip("\n")


class Session:
    """One reader's shell for one page: its folder, environment, processes and bindings."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.cwd = folder  # where the next command runs: a `cd` moves it
        self.bindings = Bindings()
        self.procs = Processes(folder / ".logs")
        self.env = reader_env()
        self.env["TMPDIR"] = str(folder / ".tmp")  # `mktemp -d`: a scratch folder in ours
        (folder / ".tmp").mkdir(parents=True, exist_ok=True)
        self.background: list[tuple[str, Proc]] = []
        self.last_code = 0  # what `$?` says in the next command
        folder.mkdir(parents=True, exist_ok=True)
        for entry in ROOT.iterdir():
            if entry.name not in NOT_LINKED and not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)

    def close(self) -> None:
        self.procs.__exit__(None, None, None)

    def take(self, step: Step) -> None:
        {"run": self.run, "start": self.start, "log": self.log, "stop": self.stop}[step.kind](step)

    def run(self, step: Step) -> None:
        deadline = time.monotonic() + (POLL_DEADLINE_S if step.poll else 0)
        command = self.bindings.command(step.command)
        while True:
            code, output = self.shell(command)
            try:
                if code != 0:
                    raise Mismatch(f"`{command}` exited with {code}:\n{output}")
                self.compare(step.expected, output)
                return
            except Mismatch:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def compare(self, expected: str | None, output: str, log: bool = False) -> None:
        if expected is None:
            return
        pattern, groups = self.bindings.pattern(expected, log)
        match = pattern.fullmatch(clean(output) + "\n")
        if match is None:
            raise Mismatch(f"the page shows:\n{expected}\n\nbut this came back:\n{output}")
        self.bindings.bind(match, groups)

    def shell(self, command: str) -> tuple[int, str]:
        """Run `command` in bash on a terminal (as a reader's curl and `time` print on one);
        keep the variables it sets, and the folder it moved to, for the next command."""
        env_file, cwd_file = self.folder / ".env-after", self.folder / ".cwd-after"
        keep = (
            f"__rc=$?\nset +a\nexport -n __rc\nenv -0 > {shlex.quote(str(env_file))}\n"
            f"pwd > {shlex.quote(str(cwd_file))}\n"
        )
        script = f"set -a\n(exit {self.last_code})\n{command}\n{keep}exit $__rc\n"
        code, output = run_on_terminal(["bash", "-c", script], self.env, self.cwd)
        if env_file.exists():
            pairs = env_file.read_bytes().split(b"\0")
            self.env = dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
            env_file.unlink()
        if cwd_file.exists():
            self.cwd = Path(cwd_file.read_text().strip())
            cwd_file.unlink()
        self.last_code = code
        return code, output

    def start(self, step: Step) -> None:
        command = self.bindings.command(step.command)
        name = process_name(command)
        script = f"cd {shlex.quote(str(self.cwd))}\n{command}\n"
        proc = self.procs.start(name, ["bash", "-c", script], self.env)
        self.background.append((name, proc))
        poll(lambda: ready(name, command, proc), START_DEADLINE_S, f"`{command}` to answer")
        if step.expected:  # what `make run` printed, shown under it
            self.log(Step(step.page, step.line, "log", name, step.expected))

    def log(self, step: Step) -> None:
        """Each line shown must be in the process's output (in any order: the stage's
        processes start together), within the deadline."""
        proc = self.process(step.command)
        lines = [line.strip() for line in step.expected.splitlines()]

        def shown() -> bool:
            output = clean(proc.output()).splitlines()
            return all(self._in_log(line, output) for line in lines if line not in ELIDED)

        try:
            poll(shown, POLL_DEADLINE_S, "the log lines")
        except AssertionError:
            raise Mismatch(
                f"not all of these lines are in the output of `{step.command}`:\n"
                f"{step.expected}\n\nits output:\n{proc.output()[-4000:]}"
            ) from None

    def _in_log(self, line: str, output: list[str]) -> bool:
        pattern, groups = self.bindings.pattern(line, log=True)
        search = re.compile(pattern.pattern.removesuffix(r"[ \t]*\n"))
        for text in output:
            if match := search.search(text):
                self.bindings.bind(match, groups)
                return True
        return False

    def stop(self, step: Step) -> None:
        """What Ctrl-C in that process's terminal does: SIGINT to its process group."""
        proc = self.process(step.command)
        proc.signal(signal.SIGINT)
        proc.process.wait(STOP_DEADLINE_S)

    def process(self, name: str) -> Proc:
        for started, proc in reversed(self.background):
            if started == name:
                return proc
        raise Mismatch(f"no background process `{name}` was started on this page")


def reader_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env = {k: v for k, v in env.items() if not k.startswith(("COV_CORE_", "PYTEST_"))}
    venv = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv)
    return env


def run_on_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + COMMAND_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([controller], [], [], 0.5)
            if not readable:
                continue
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the command and everything it started have closed it
                break
            if not data:
                break
            chunks.append(data)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise Mismatch(f"`{argv[-1]}` did not finish within {COMMAND_TIMEOUT_S:.0f} s")
        return process.wait(STOP_DEADLINE_S), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(controller)


def process_name(command: str) -> str:
    """`make run ...` -> run, `python -m devkit.valkey ...` -> valkey, `uvicorn ...` -> uvicorn."""
    words = [w for w in shlex.split(command) if not re.match(r"^\w+=", w)]
    if words[0] == "make":
        return words[1]
    if words[0].startswith("python") and words[1] == "-m":
        return words[2].removeprefix("devkit.")
    return Path(words[0]).name


def ready(name: str, command: str, proc: Proc) -> bool:
    if not proc.running():
        raise Mismatch(f"`{command}` exited with {proc.process.returncode}:\n{proc.output()}")
    if name == "run":
        return "Press Ctrl-C to stop." in proc.output()
    if name == "arq":
        return harness.worker_polls(proc)
    if name == "scaleout":  # its APIs listen on addresses of their own (devkit/scaleout.py)
        return "Ctrl-C stops it all" in proc.output()
    ports = re.findall(r"(?:--port |:|http\.server )(\d{2,5})\b", command) or ["8000"]
    return all(listening(int(port)) for port in ports)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
