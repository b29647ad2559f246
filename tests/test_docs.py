"""Every code block of README.md and docs/*.md runs as printed.

Fence tags: `bash` (each command runs, must exit 0), `console` (`$ ` lines run; the lines after each are its
shown output, compared; `...` stands for any lines, durations match any duration; `console illustrative`
compares nothing but the exit status), `python` (runs as a script), `text`/`json`/`csv` (shown, not run).
`<!-- doc-test: file NAME -->` before a block (python, or a shown csv/json/text one) writes it to NAME in the
sandbox instead of running it;
`<!-- doc-test: skip REASON -->` leaves it out (a GPU, a cluster, another Python). An untagged fence fails.
`<!-- doc-test: bound "LABEL" <= VALUE -->` before a console block: the number printed right after LABEL depends
on the CPU (float32 kernels), so it is matched as a number, which must be <= VALUE (the shown one too), not as
digits; the doc says that it varies. Several directive lines may stand above one block.

All blocks of one file run in order in one sandbox folder holding small stand-ins laid out like the real
material: `models/bd_net.h5` and `data/{cl,bd}/...h5` (the demo workspace, standing in for the lab's 700 MB
files), `real/` (../shared/real) and `faces/{cl,bd}/...h5` (200 augmented real faces per file, as
`python scripts/real_lab_files.py faces` writes).

`python tests/test_docs.py FILE.md...` runs the console blocks of FILE in such a sandbox and writes their real
output into the file (then cut long outputs with `...` by hand).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from doc_commands import plain_argv, run_forked

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHOWN = {"text", "json", "csv"}
RUN = {"bash", "console", "python"}
FENCE = re.compile(r"^```(\S*)(.*)$")
DIRECTIVE = re.compile(r"^<!-- doc-test: (skip|file|bound) (.+?) -->$")
BOUND = re.compile(r'^"(.+)" <= (\S+)$')
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
DURATION = re.compile(r"\d+(?:\.\d+)? s\b")
SETUP = re.compile(r"^(pip install|python -m pytest|ruff check)\b")
README_LINES = 250
TIMEOUT = 600


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    tag: str
    info: str
    text: str
    directive: tuple[str, str] | None
    bounds: tuple[tuple[str, float], ...] = ()  # (label, largest value) of `bound` directives

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with the doc-test directive on the line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        above, j = [], start - 1
        while j >= 0 and DIRECTIVE.match(lines[j]):
            above.append(DIRECTIVE.match(lines[j]))
            j -= 1
        kinds = [d for d in above if d[1] != "bound"]
        found.append(Block(path, start + 1, m[1], m[2].strip(), "\n".join(body) + "\n",
                           (kinds[0][1], kinds[0][2]) if kinds else None,
                           tuple(parse_bound(d[2], path, start + 1) for d in reversed(above) if d[1] == "bound")))
        i += 1
    return found


def parse_bound(text: str, path: Path, line: int) -> tuple[str, float]:
    m = BOUND.match(text)
    assert m, f'{path.name}:{line}: doc-test bound takes "LABEL" <= VALUE, got {text!r}'
    return m[1], float(m[2])


def commands(text: str) -> list[str]:
    """The commands of a bash block: lines joined on a trailing backslash, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def transcript(text: str) -> list[tuple[str, list[str]]]:
    """A console block as (command, shown output lines); `\\` continues a command onto the next line."""
    steps: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            steps.append((command, []))
        elif steps:
            steps[-1][1].append(line)
        else:
            raise AssertionError(f"console block starts with output, not a `$ ` command: {line!r}")
        i += 1
    return steps


def runnable(command: str) -> str | None:
    """The part of a shell command the sandbox runs: leading set-up steps (pip install, pytest, ruff) are dropped."""
    parts = [p.strip() for p in command.split(" && ")]
    kept = [p for p in parts if not SETUP.match(p)]
    return " && ".join(kept) if kept else None


def output_pattern(shown: list[str], bounds: tuple[tuple[str, float], ...] = ()) -> re.Pattern[str]:
    """Shown output as a regex over the real output: `...` lines match any lines, durations any duration, and the
    number after each bound's LABEL any number (captured as group b<i> for `check_bounds`)."""
    labels = re.compile("|".join(f"({re.escape(label)} )" + NUMBER for label, _ in bounds)) if bounds else None
    pieces = []
    for line in shown:
        if line.strip() == "...":
            pieces.append(r"(?:[^\n]*\n)*?")
            continue
        text, line_pieces, at = line.rstrip(), [], 0
        for m in labels.finditer(text) if labels else ():
            i = next(k for k, g in enumerate(m.groups()) if g is not None)
            line_pieces += [_plain(text[at:m.start()]), re.escape(m[i + 1]) + f"(?P<b{i}_{len(pieces)}>{NUMBER})"]
            at = m.end()
        pieces.append("".join(line_pieces) + _plain(text[at:]) + r"[ \t]*\n")
    return re.compile("".join(pieces))


def _plain(text: str) -> str:
    """Literal text, durations matching any duration."""
    return r"\d+(?:\.\d+)? s".join(re.escape(p) for p in DURATION.split(text))


def check_bounds(match: re.Match[str], bounds: tuple[tuple[str, float], ...]) -> list[str]:
    """The bound directives a matched output breaks, in words."""
    broken = []
    for name, value in match.groupdict().items():
        label, limit = bounds[int(name[1:].split("_")[0])]
        if float(value) > limit:
            broken.append(f"{label} {value} is above the doc's stated bound {limit:g}")
    return broken


def normalise(output: str) -> str:
    lines = [line.rstrip() for line in output.splitlines()]
    return "\n".join(lines) + "\n" if lines else ""


# --- the checks every tier runs (parsing only) ---------------------------------------------------------------


def test_readme_is_short() -> None:
    count = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert count <= README_LINES, f"README.md has {count} lines; move detail to docs/"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.stem)
def test_every_fence_has_a_known_tag(path: Path) -> None:
    for block in blocks(path):
        assert block.tag in RUN | SHOWN, f"{block.where()}: fence tag {block.tag!r}; use one of {sorted(RUN | SHOWN)}"
        if block.info:
            assert block.tag == "console" and block.info == "illustrative", f"{block.where()}: info {block.info!r}"
        if block.directive and block.directive[0] == "file":
            assert block.tag in {"python"} | SHOWN, f"{block.where()}: doc-test file applies to python and shown blocks"
        if block.bounds:
            assert block.tag == "console", f"{block.where()}: doc-test bound applies to console blocks"
            shown = [line for _, out in transcript(block.text) for line in out]
            for label, limit in block.bounds:
                values = [float(m[1]) for line in shown for m in re.finditer(re.escape(label) + f" ({NUMBER})", line)]
                assert values, f"{block.where()}: no {label!r} in the shown output (a stale doc-test bound)"
                assert max(values) <= limit, f"{block.where()}: the shown {label} {max(values)} is above its bound {limit:g}"


def readme_commands() -> list[str]:
    return [c for b in blocks(ROOT / "README.md") if b.tag == "bash" for c in commands(b.text)] + [
        c for b in blocks(ROOT / "README.md") if b.tag == "console" for c, _ in transcript(b.text)]


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    assert len(ci) == 1
    assert ci[0] in readme_commands(), "the README's test command differs from .ci/run's"
    assert ci[0].endswith("python -m pytest"), "CI runs the whole suite, every tier"


def test_setup_commands_name_real_extras_and_markers(pytestconfig: pytest.Config) -> None:
    from importlib.metadata import metadata

    extras = set(metadata("torch-badnet").get_all("Provides-Extra") or [])
    markers = {m.split(":")[0].strip() for m in pytestconfig.getini("markers")}
    for doc in DOCS:
        for block in blocks(doc):
            if block.tag not in ("bash", "console"):
                continue
            lines = commands(block.text) if block.tag == "bash" else [c for c, _ in transcript(block.text)]
            for command in lines:
                for extra in re.findall(r"\.\[([a-z,]+)\]", command):
                    assert set(extra.split(",")) <= extras, f"{block.where()}: unknown extra in {command!r}"
                for expr in re.findall(r'-m "([^"]+)"', command):
                    names = set(re.findall(r"[a-z_]+", expr)) - {"not", "and", "or"}
                    assert names <= markers, f"{block.where()}: unregistered marker in {command!r}"


def test_bound_directive_matches_a_number_within_its_bound(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text('<!-- doc-test: bound "max |d|" <= 2e-05 -->\n```console\n$ run\nok, max |d| 7.81e-06 in 2.0 s\n```\n')
    (block,) = blocks(doc)
    assert block.bounds == (("max |d|", 2e-05),) and block.directive is None
    pattern = output_pattern(block.text.splitlines()[1:], block.bounds)
    assert not check_bounds(pattern.fullmatch("ok, max |d| 9.42e-06 in 3.1 s\n"), block.bounds)  # another CPU
    assert check_bounds(pattern.fullmatch("ok, max |d| 3.5e-05 in 3.1 s\n"), block.bounds)  # over the bound
    assert not pattern.fullmatch("ok, max |e| 9.42e-06 in 3.1 s\n")
    assert not output_pattern(block.text.splitlines()[1:]).fullmatch("ok, max |d| 9.42e-06 in 2.0 s\n")  # no directive: digits


def test_output_pattern() -> None:
    pattern = output_pattern(["a in 2.0 s on cpu", "...", "last"])
    assert pattern.fullmatch("a in 13.7 s on cpu\nx\ny\nlast\n")
    assert pattern.fullmatch("a in 9 s on cpu\nlast\n")
    assert not pattern.fullmatch("a in 2.0 s on gpu\nlast\n")
    assert not pattern.fullmatch("a in 2.0 s on cpu\nlast\nmore\n")


# --- running every block (slow) ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def doc_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo cache for every doc (the workspace renders once)."""
    return tmp_path_factory.mktemp("doc-cache")


def sandbox(root: Path, cache: Path) -> dict[str, str]:
    """Lay out the stand-ins in `root`; return the environment the blocks run in."""
    from torch_badnet.data.real_faces import REAL_DIR, write_lab_files

    env = {**os.environ, "TORCH_BADNET_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "COLUMNS": "160"}
    env.pop("TORCH_BADNET_DEBUG", None)
    saved = os.environ.get("TORCH_BADNET_CACHE")
    os.environ["TORCH_BADNET_CACHE"] = str(cache)
    try:
        from torch_badnet.demo import ensure_workspace

        ws = ensure_workspace(log=lambda line: None)
    finally:
        if saved is None:
            os.environ.pop("TORCH_BADNET_CACHE")
        else:
            os.environ["TORCH_BADNET_CACHE"] = saved
    (root / "models").mkdir()
    (root / "models" / "bd_net.h5").symlink_to(ws.model)
    for kind, name in (("cl", "valid.h5"), ("cl", "test.h5"), ("bd", "bd_valid.h5"), ("bd", "bd_test.h5")):
        (root / "data" / kind).mkdir(parents=True, exist_ok=True)
        (root / "data" / kind / name).symlink_to(ws.root / "data" / kind / name)
    (root / "real").symlink_to(REAL_DIR)
    write_lab_files(root / "faces", 200)
    return env


def run_shell(command: str, cwd: Path, env: dict[str, str], merged: bool = False) -> subprocess.CompletedProcess[str]:
    """A shown command: a plain `torch-badnet ARGS` forked from a process that imported torch once
    (doc_commands.py), any other in bash; with `merged`, stderr in stdout (`2>&1`)."""
    argv = plain_argv(command)
    if argv is not None:
        return run_forked(argv, cwd, env, TIMEOUT, merged)
    return subprocess.run(["bash", "-c", command + (" 2>&1" if merged else "")], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def check_console(block: Block, cwd: Path, env: dict[str, str]) -> None:
    for command, shown in transcript(block.text):
        command = runnable(command)
        if command is None:
            continue
        done = run_shell(command, cwd, env, merged=True)
        errors = [line for line in shown if line.startswith("error:")]
        expected = 2 if errors else 0
        assert done.returncode == expected, (f"{block.where()}: `{command}` exited {done.returncode}, expected "
                                             f"{expected}:\n{done.stdout[-3000:]}")
        if block.info == "illustrative":
            continue
        output = normalise(done.stdout)
        match = output_pattern(shown, block.bounds).fullmatch(output)
        assert match, f"{block.where()}: `{command}` printed\n{output}\nwhich does not match the shown\n" + "\n".join(shown)
        broken = check_bounds(match, block.bounds)
        assert not broken, f"{block.where()}: `{command}` printed\n{output}\nwhere " + "; ".join(broken)


def writes_file(block: Block) -> bool:
    return block.directive is not None and block.directive[0] == "file"


def check_block(block: Block, cwd: Path, env: dict[str, str]) -> None:
    if block.directive and block.directive[0] == "skip":
        return
    if block.directive and block.directive[0] == "file":
        (cwd / block.directive[1]).write_text(block.text, encoding="utf-8")
        return
    if block.tag == "python":
        done = subprocess.run([sys.executable, "-c", block.text], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert done.returncode == 0, f"{block.where()}: the script failed:\n{done.stderr[-3000:]}"
    elif block.tag == "bash":
        for command in commands(block.text):
            shell = runnable(command)
            if shell is None:
                continue
            done = run_shell(shell, cwd, env)
            assert done.returncode == 0, f"{block.where()}: `{shell}` exited {done.returncode}:\n{done.stderr[-3000:]}"
    elif block.tag == "console":
        check_console(block, cwd, env)


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.stem)
def test_code_blocks_run_as_printed(path: Path, tmp_path: Path, doc_cache: Path) -> None:
    env = sandbox(tmp_path, doc_cache)
    ran = 0
    for block in blocks(path):
        if block.tag in RUN or writes_file(block):
            check_block(block, tmp_path, env)
            ran += block.tag in RUN
    if path.name == "README.md":  # the API script did what it says
        assert ran >= 5, "the README's examples were not found"
        summary = json.loads((tmp_path / "api-results" / "summary.json").read_text())
        assert [t["x"] for t in summary["thresholds"]] == [2.0, 4.0, 10.0]
        assert (tmp_path / "api-results" / "finetuned-X4" / "finetuned.pt").is_file()


def test_shlex_splits_every_command() -> None:
    """A command that the shell cannot even split is a typo in the docs."""
    for doc in DOCS:
        for block in blocks(doc):
            if block.tag == "bash":
                for command in commands(block.text):
                    shlex.split(command)
            elif block.tag == "console":
                for command, _ in transcript(block.text):
                    shlex.split(command)


def fill(path: Path) -> None:
    """Rewrite the shown output of `path`'s console blocks (not illustrative ones) with what they print now; an
    output shown as `...` alone stays so (the commands still run, in order)."""
    import tempfile

    text = path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "sandbox", Path(tmp) / "cache"
        root.mkdir()
        cache.mkdir()
        env = sandbox(root, cache)
        lines = text.splitlines()
        out, cursor = [], 0
        for block in blocks(path):
            if (block.tag in RUN or writes_file(block)) and not (block.directive and block.directive[0] == "skip"):
                if block.tag == "console" and block.info != "illustrative":
                    body = []
                    for command, shown in transcript(block.text):
                        done = subprocess.run(["bash", "-c", (runnable(command) or "true") + " 2>&1"], cwd=root,
                                              env=env, capture_output=True, text=True, timeout=TIMEOUT)
                        elided = [line.strip() for line in shown] == ["..."]  # an output the doc elides stays elided
                        body += ["$ " + command, *(shown if elided else normalise(done.stdout).splitlines())]
                    out += lines[cursor : block.line] + body
                    cursor = block.line + len(block.text.splitlines())
                else:
                    check_block(block, root, env)
        out += lines[cursor:]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        fill(Path(name).resolve())
