"""The plugin as a user installs it: it imports without torch, and its wheel works outside the repository.

* In a subprocess where ``import torch`` (and the other demo-only packages) fails, the signing mod,
  the strategies, the ledger and the CLI's ledger commands import and run.
* ``python -m build`` gives an sdist and a wheel (built from the sdist, so the sdist is complete); the
  wheel installed, not editable, into a fresh venv (``--system-site-packages`` for flwr, numpy, ...)
  and run from a temporary directory with no path to the repository has the ``flower-chain`` script,
  the contract artifact and the explorer page, and swaps into a plain Flower app as the README says
  (``tests/support/apps/quickstart_message/``, run by ``flwr run`` with the venv's interpreter); ``flower-chain ledger verify`` passes on its ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from tests.e2e.test_swap_in import MESSAGE_API_CHANGE, RUN_CONFIG_CHANGE, make_app

ROOT = Path(__file__).resolve().parents[2]

DEMO_ONLY = ("torch", "torchvision", "mlxtend", "flwr_datasets")
"""Packages of the ``demo`` extra: the plugin must not need them."""

NO_TORCH_PRELUDE = textwrap.dedent(f"""
    import sys
    for name in {DEMO_ONLY!r}:
        sys.modules[name] = None  # `import name` now raises ImportError
""")


def _run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH_PRELUDE + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200"),
    )


def test_plugin_imports_and_runs_without_torch(tmp_path, federation_factory):
    fed = federation_factory("sqlite")
    for rnd in (1, 2):
        fed.add_round(rnd, n=3)
    fed.ledger.close()
    code = f"""
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the prelude did not block torch")
        from flower_chain.clients import make_signing_mod, signing_mod
        from flower_chain.strategies import LedgerStrategy, LegacyLedgerStrategy
        from flower_chain.ledger import open_ledger, verify
        import flower_chain.ledger.location, flower_chain.audit.report, flower_chain.audit.replay, flower_chain.serve.app
        from flower_chain.cli import app
        from typer.testing import CliRunner

        run = CliRunner().invoke
        assert run(app, ["keys", "init", "keys", "--clients", "2"]).exit_code == 0
        r = run(app, ["ledger", "verify", {fed.uri!r}])
        assert r.exit_code == 0 and "VERIFIED" in r.output, r.output
        r = run(app, ["ledger", "summary", {fed.uri!r}, "--json"])
        assert r.exit_code == 0, r.output
        assert run(app, ["ledger", "audit", {fed.uri!r}]).exit_code == 3  # NOT AUDITED: nothing stored to replay
        assert run(app, ["ledger", "show", {fed.uri!r}, "99"]).exit_code == 2  # input error, mapped by its type
        demo = sorted(m for m in sys.modules if m.split(".")[0] in {DEMO_ONLY!r} and sys.modules[m] is not None)
        assert not demo, demo
        assert not [m for m in sys.modules if m.startswith("flower_chain.app")], "the plugin imported the demo"
        print("ok")
    """
    r = _run_without_torch(code, tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-3000:]


def test_the_demo_says_it_needs_torch(tmp_path):
    """Without torch, the demo app fails on import (it is the ``demo`` extra), and only the demo does."""
    r = _run_without_torch("import flower_chain.app.model\n", tmp_path)
    assert r.returncode != 0 and ("ImportError" in r.stderr or "ModuleNotFoundError" in r.stderr), r.stderr[-2000:]


def _venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without any path to the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(COLUMNS="200", **extra)
    return env


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """Build sdist + wheel with ``python -m build``, install the wheel (not editable) into a fresh venv."""
    pytest.importorskip("build", reason="python -m build needs the `build` package (dev extra)")
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    # --no-isolation: use the installed setuptools instead of fetching a build environment
    r = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels, sdists = sorted(dist.glob("flower_chain-*.whl")), sorted(dist.glob("flower_chain-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    env_dir = work / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=os.name != "nt").create(env_dir)
    py = _venv_python(env_dir)
    # pip of this interpreter installs into the venv (--prefix); --ignore-installed: a copy in the venv even though
    # the repository's editable install is visible through the system site-packages; --no-deps: the dependencies
    # come from the system site-packages (checked below against the wheel's metadata).
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    r = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--ignore-installed",
            "--no-compile",
            "--disable-pip-version-check",
            str(wheels[0]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
        env=_clean_env(),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"python": py, "bin": py.parent, "purelib": Path(purelib), "work": work, "wheel": wheels[0]}


def _in_venv(inst, *args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_clean_env(PATH=f"{inst['bin']}{os.pathsep}{os.environ.get('PATH', '')}", **env),
    )


def test_wheel_installs_outside_the_repository(installed_wheel, tmp_path):
    inst = installed_wheel
    probe = textwrap.dedent("""
        import json, sys
        from importlib import metadata, resources
        from packaging.requirements import Requirement
        import flower_chain
        dist = metadata.distribution("flower-chain")
        unmet = []
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an extra's requirement
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                unmet.append(f"{req} (not installed)")
                continue
            if not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{req} (have {have})")
        print(json.dumps({
            "file": flower_chain.__file__,
            "dist_files": str(dist.locate_file("")),
            "requires": dist.requires,
            "unmet": unmet,
            "anchor": resources.files("flower_chain.anchor").joinpath("LedgerAnchor.json").is_file(),
            "explorer": resources.files("flower_chain.serve").joinpath("explorer.html").is_file(),
        }))
    """)
    r = _in_venv(inst, str(inst["python"]), "-c", probe, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout)
    assert Path(info["file"]).resolve().is_relative_to(inst["purelib"].resolve()), info["file"]
    assert not Path(info["file"]).resolve().is_relative_to(ROOT), info["file"]
    assert info["anchor"] and info["explorer"], info
    assert not info["unmet"], info["unmet"]
    runtime = [s for s in info["requires"] if "extra ==" not in s]
    assert not [
        s
        for s in runtime
        if s.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
        in ("torch", "torchvision", "mlxtend", "flwr-datasets")
    ], runtime
    script = inst["bin"] / ("flower-chain.exe" if os.name == "nt" else "flower-chain")
    assert script.is_file(), sorted(p.name for p in inst["bin"].iterdir())
    r = _in_venv(inst, str(script), "--help", cwd=tmp_path)
    assert r.returncode == 0 and "ledger" in r.stdout and "keys" in r.stdout, r.stdout + r.stderr


def _flwr_scripts_for(inst) -> None:
    """Flower's console scripts bound to the venv's interpreter (they live in the system site-packages): ``flwr``
    and the SuperLink, SuperExec and simulation processes it starts then import flower_chain from the wheel."""
    from importlib import metadata

    for ep in metadata.distribution("flwr").entry_points:
        if ep.group != "console_scripts":
            continue
        module, _, attr = ep.value.partition(":")
        script = inst["bin"] / ep.name
        script.write_text(
            f"#!{inst['python']}\nimport sys\nfrom {module} import {attr.split('.')[0]}\nsys.exit({attr}())\n"
        )
        script.chmod(0o755)


def test_wheel_swaps_into_a_flower_app(installed_wheel, tmp_path):
    """The README's recipe on a plain Flower App, run by `flwr run` with the installed wheel; the ledger verifies."""
    from flower_chain.app.local_run import LocalSuperLink

    inst = installed_wheel
    _flwr_scripts_for(inst)
    script = str(inst["bin"] / ("flower-chain.exe" if os.name == "nt" else "flower-chain"))
    n = 2
    r = _in_venv(inst, script, "keys", "init", str(tmp_path / "keys"), "--clients", str(n), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    where = {
        "quickstart/server_app.py": [
            (
                "app = ServerApp()",
                "import flower_chain\nfrom flwr.common.logger import log\n"
                "log(20, 'flower_chain from %s', flower_chain.__file__)\n"
                "app = ServerApp()",
            )
        ]
    }
    app = make_app("quickstart_message", tmp_path, MESSAGE_API_CHANGE, RUN_CONFIG_CHANGE, where)
    env = _clean_env(PATH=f"{inst['bin']}{os.pathsep}{os.environ.get('PATH', '')}")
    with LocalSuperLink(base_env=env, cwd=tmp_path, log_dir=tmp_path) as link:  # no path to the repository
        res = link.run(app, num_supernodes=n, run_config={"out-file": str(tmp_path / "w.npy")}, timeout=600)
    text = res.log.read_text()
    assert res.ok, text[-4000:]
    line = next(ln for ln in text.splitlines() if "flower_chain from" in ln)
    assert Path(line.split("flower_chain from ", 1)[1].strip()).resolve().is_relative_to(inst["purelib"].resolve()), (
        line
    )
    assert (tmp_path / "w.npy").exists()
    (db,) = tmp_path.glob("ledger-*.db")
    r = _in_venv(inst, script, "ledger", "verify", f"sqlite:///{db}", "--keys", "keys/keyring", cwd=tmp_path)
    assert r.returncode == 0 and "VERIFIED" in r.stdout, r.stdout + r.stderr
