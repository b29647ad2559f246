"""The wheel stands alone: built from a clean copy of the repository, installed into a fresh venv far from it
(no system site-packages), it runs `torch-badnet demo` and the README's API script; its metadata is complete and
`torch-badnet --version` matches it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"  # the README's set-up pin: the CPU wheel, from pip's cache after the first time


def test_version_matches_the_installed_metadata(cli) -> None:
    from importlib.metadata import version

    import torch_badnet

    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"torch-badnet {version('torch-badnet')}"
    assert torch_badnet.__version__ == version("torch-badnet")


def test_metadata_is_complete() -> None:
    from importlib.metadata import metadata

    meta = metadata("torch-badnet")
    assert meta["License"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    classifiers = meta.get_all("Classifier") or []
    assert "License :: OSI Approved :: MIT License" in classifiers and any(c.startswith("Topic ::") for c in classifiers)
    assert len(meta.get_all("Project-URL") or []) >= 2
    assert meta["Description-Content-Type"] == "text/markdown"


def clean_copy(dest: Path) -> Path:
    """The files git tracks or would add (nothing ignored: no .venv, caches or build output)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def readme_api_script() -> str:
    import test_docs

    [script] = [b.text for b in test_docs.blocks(ROOT / "README.md")
                if b.tag == "python" and b.directive is None and "tb.prune_sweep(" in b.text]  # the API script
    return script


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_demo_and_the_api(tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp("wheel")
    source = clean_copy(work / "src")
    dist = work / "dist"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "TORCH_BADNET"))}
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)], env=env)  # sdist, then the wheel from it
    [wheel], [sdist] = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert "torch_badnet/demo/bd_net_demo.h5" in names
    modules = {f"torch_badnet/{p.relative_to(ROOT / 'torch_badnet')}" for p in (ROOT / "torch_badnet").rglob("*.py")}
    modules |= {f"torch_badnet/convert/{p.relative_to(ROOT / 'convert')}" for p in (ROOT / "convert").rglob("*.py")}
    assert modules <= set(names), f"modules missing from the wheel (pyproject's packages): {sorted(modules - set(names))}"
    assert not any(n.startswith(("tests/", "scripts/", "convert/")) for n in names)
    assert any(n.endswith("licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), names
    assert "# torch-badnet" in meta.get_payload()  # the README is the long description
    assert sdist.name == f"torch_badnet-{meta['Version']}.tar.gz"

    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env=env)
    python, tool = venv / "bin" / "python", venv / "bin" / "torch-badnet"
    run([str(python), "-m", "pip", "install", "-q", TORCH_PIN, str(wheel)], env=env)

    home = work / "home"  # a user with nothing cached, in a folder with no repository above it
    (home / "run").mkdir(parents=True)
    user = {**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}
    where = run([str(python), "-c", "import torch_badnet; print(torch_badnet.__file__)"], cwd=home / "run", env=user)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    version = run([str(python), "-c", "from importlib.metadata import version; print(version('torch-badnet'))"],
                  cwd=home / "run", env=user).stdout.strip()
    assert run([str(tool), "--version"], cwd=home / "run", env=user).stdout.strip() == f"torch-badnet {version}"
    assert version == meta["Version"]

    demo = run([str(tool), "demo", "--no-plot"], cwd=home / "run", env=user)
    assert "Pruning defense on the demo BadNet" in demo.stdout
    assert (home / "run" / "demo-results" / "summary.json").is_file()
    assert (home / "cache" / "torch-badnet").is_dir()  # the workspace went to XDG_CACHE_HOME

    api = run([str(python), "-c", readme_api_script()], cwd=home / "run", env=user)
    assert "B'_4 prunes" in api.stdout and (home / "run" / "api-results" / "finetuned-X4" / "finetuned.pt").is_file()
