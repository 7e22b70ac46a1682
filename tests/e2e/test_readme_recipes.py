"""The README's recipes, run exactly as written on plain Flower Apps (``tests/support/apps/``).

Every fenced block marked ``<!-- recipe: NAME -->`` in README.md is read from the README at test time: shell
blocks run in ``bash -e``, diff blocks are applied to a copy of a plain app (each hunk's old lines must occur
exactly once; see :func:`apply_diff`). The only changes to the text are the README's own placeholders:
``/abs/path`` (this test's directory), ``RUN_ID`` (the id ``flwr run`` printed), ``SERVER`` (127.0.0.1) and
the deployment's ports (free ports instead of 9093/9094, so that tests can run side by side). Each placeholder
must occur in the block it is replaced in, so a README that drops one fails here.

* Message API: the wheel built from this repository, ``pip install``-ed into a fresh venv as the README says
  (the app lists it by file URL, as the README says), keys, the edits, ``flwr run . --stream`` with that venv's
  Flower, then ``summary``, ``verify`` with the pinned server key and ``audit``; the README's command stops the
  local SuperLink that ``flwr run`` started, and every process it started is gone.
* Legacy API: the same with the repository's installed plugin (its end-of-run log is not checked: requests-H R2).
* Deployment by hand: a SuperLink, two SuperNodes on one host (their own ``--port``), the SuperLink connection
  the recipe defines, ``flwr run . mine``, the after-run commands, then the README's stop command; every
  process is stopped by PID in any case (also when the test fails).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import venv
from pathlib import Path

import pytest

from flower_chain.app.local_run import LocalSuperLink, free_port, stop_process_trees
from flower_chain.ledger import open_ledger
from flower_chain.ledger.inspect import summary
from tests.e2e.test_swap_in import APPS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
WHEEL = "flower_chain-0.1.0-py3-none-any.whl"  # the name the README gives; the build must produce it
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MARK = re.compile(
    r"^[ \t]*<!-- recipe: ([a-z0-9-]+) -->[ \t]*\n(?:[ \t]*\n)?([ \t]*)```(\w+)\n(.*?)^\2```[ \t]*$", re.S | re.M
)


# --- reading the README ----------------------------------------------------------------------------------------


def recipes(text: str | None = None) -> dict[str, tuple[str, str]]:
    """Every marked block of the README: ``{name: (language, text)}``, indentation of a list item removed."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found: dict[str, tuple[str, str]] = {}
    for m in _MARK.finditer(text):
        name, indent, lang, body = m.groups()
        assert name not in found, f"two README blocks are marked recipe: {name}"
        lines = body.splitlines(keepends=True)
        assert all(ln.startswith(indent) or not ln.strip() for ln in lines), f"recipe {name}: ragged indentation"
        found[name] = (lang, "".join(ln[len(indent) :] if ln.strip() else "\n" for ln in lines))
    return found


def recipe(name: str, lang: str, **subs: str) -> str:
    """The README block ``name``, its placeholders replaced; each placeholder must be in it."""
    blocks = recipes()
    assert name in blocks, f"README.md has no block marked <!-- recipe: {name} --> (found {sorted(blocks)})"
    got_lang, text = blocks[name]
    assert got_lang == lang, f"recipe {name} is a {got_lang} block, expected {lang}"
    for placeholder, value in subs.items():
        pattern = re.escape(placeholder) if placeholder.startswith("/") else rf"\b{re.escape(placeholder)}\b"
        assert re.search(pattern, text), f"recipe {name} no longer has the placeholder {placeholder!r}"
        text = re.sub(pattern, lambda _m, v=value: v, text)
    return text


def apply_diff(app: Path, diff: str) -> None:
    """Apply a README diff to the app: ``--- FILE`` starts a file, ``@@`` a hunk; in each hunk the context and
    ``-`` lines must occur exactly once in the file and are replaced by the context and ``+`` lines."""
    files: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in diff.splitlines():
        if line.startswith("--- "):
            current = files.setdefault(line[4:].strip(), [])
        elif line.startswith("+++ "):
            continue
        elif line.startswith("@@"):
            assert current is not None, "a hunk before any '--- FILE' line"
            current.append([])
        elif line[:1] in (" ", "+", "-") or line == "":
            assert current, f"a diff line outside a hunk: {line!r}"
            current[-1].append(line if line else " ")
        else:
            raise AssertionError(f"not a diff line: {line!r}")
    assert files, "the diff names no file"
    for rel, hunks in files.items():
        path = app / rel
        source = path.read_text(encoding="utf-8")
        for hunk in hunks:
            old = "".join(ln[1:] + "\n" for ln in hunk if ln[0] in " -")
            new = "".join(ln[1:] + "\n" for ln in hunk if ln[0] in " +")
            assert source.count(old) == 1, f"{rel}: the plain app has {source.count(old)} times {old!r}"
            source = source.replace(old, new)
        path.write_text(source, encoding="utf-8")


# --- running it ------------------------------------------------------------------------------------------------


def bash(
    script: str, *, cwd: Path, env: dict[str, str], log: Path, timeout: float = 600, background: list[int] | None = None
) -> str:
    """Run ``script`` in ``bash -e`` (its own session), output to ``log``; returns the output (ANSI removed).

    Processes the script leaves running in the background keep the log open, so the output goes to a file, never
    a pipe; the script's process group id is added to ``background`` so the caller can stop what it left."""
    path = log.with_suffix(".sh")
    path.write_text(script, encoding="utf-8")
    with open(log, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen(
            ["bash", "-e", str(path)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        if background is not None:
            background.append(proc.pid)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process_trees([proc.pid], grace=2)
            raise
    text = _ANSI.sub("", log.read_bytes()[start:].decode("utf-8", "replace"))
    assert rc == 0, f"README block failed (exit {rc}):\n{script}\n--- output ---\n{text[-5000:]}"
    return text


def run_id_of(output: str) -> str:
    m = _RUN_ID.search(output)
    assert m, f"`flwr run` printed no run id:\n{output[-3000:]}"
    return m.group(1)


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout:.0f}s")


def family(pids: list[int]) -> list:
    """The processes ``pids`` and all their descendants, as psutil objects."""
    import psutil

    out = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        out += [root, *root.children(recursive=True)]
    return out


def assert_all_gone(procs: list, timeout: float = 45) -> None:
    import psutil

    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    described = []
    for p in alive:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            continue
    assert not described, "still running after the README's stop command:\n" + "\n".join(described)


def check_ledger(work: Path, run_id: str, env: dict[str, str], *, nodes: int) -> str:
    """The README's after-run commands on this run's ledger; all three must succeed."""
    out = bash(
        recipe("after-run", "bash", **{"/abs/path": str(work), "RUN_ID": run_id}),
        cwd=work,
        env=env,
        log=work / "after-run.log",
    )
    assert "VERIFIED" in out and "NOT VERIFIED" not in out, out[-3000:]
    assert "AUDITED" in out and "NOT AUDITED" not in out, out[-3000:]
    with open_ledger(f"sqlite:///{work}/ledger-{run_id}.db") as led:
        s = summary(led)
    rounds = s["rounds"]
    assert rounds == 3 and s["accepted"] == 3 * nodes and s["rejected"] == 0, s
    assert s["evaluate_accepted"] == 3 * nodes and s["evaluate_rejected"] == 0, s
    return out


def assert_log_has_the_commands(log: str, work: Path, run_id: str) -> None:
    """LedgerStrategy's end-of-run log has the README's ``verify`` (server key pinned) and ``audit`` lines."""
    text = recipe("after-run", "bash", **{"/abs/path": str(work), "RUN_ID": run_id})
    wanted = [
        ln.strip()
        for ln in text.splitlines()
        if ln.startswith(("flower-chain ledger verify", "flower-chain ledger audit"))
    ]
    assert len(wanted) == 2 and "--server-key" in wanted[0], wanted
    for line in wanted:
        assert line in log, f"the end-of-run log lacks the README's command {line!r}:\n{log[-3000:]}"


def keys_only(work: Path) -> str:
    """The install block without its ``pip install`` line: this test uses the repository's installed plugin (the
    Message API test runs the whole block, into a venv)."""
    text = recipe("swap-install", "bash", **{"/abs/path": str(work)})
    line = f"pip install {work}/{WHEEL}\n"
    assert text.count(line) == 1, text
    return text.replace(line, "")


def plain_app(kind: str, work: Path, *diffs: str) -> Path:
    app = work / "app"
    shutil.copytree(APPS / kind, app, ignore=shutil.ignore_patterns("__pycache__"))
    for name in diffs:
        apply_diff(app, recipe(name, "diff", **{"/abs/path": str(work)}))
    return app


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The plugin's wheel, built from this repository as the README says (``python -m build --wheel``)."""
    pytest.importorskip("build", reason="python -m build needs the `build` package (dev extra)")
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=dist,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert [p.name for p in dist.glob("*.whl")] == [WHEEL], "the README names the wheel " + WHEEL
    return dist / WHEEL


def _clean_env(base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return dict(env, COLUMNS="200", NO_COLOR="1", PYTHONUNBUFFERED="1")


# --- the recipes -----------------------------------------------------------------------------------------------


def test_readme_marks_every_recipe():
    """The blocks the tests below run are in the README, in the languages they are run as."""
    got = {name: lang for name, (lang, _text) in recipes().items()}
    assert got == {
        "swap-install": "bash",
        "swap-pyproject": "diff",
        "swap-message-api": "diff",
        "swap-legacy": "diff",
        "swap-run": "bash",
        "after-run": "bash",
        "deployment-superlink": "bash",
        "deployment-supernodes": "bash",
        "deployment-run": "bash",
        "stop": "bash",
        "stop-local": "bash",
    }, got


def test_apply_diff_refuses_a_hunk_that_does_not_match(tmp_path):
    """Negative control for the diff applier: a README edit the app does not have fails, it is never skipped."""
    (tmp_path / "a.py").write_text("x = 1\ny = 2\n")
    with pytest.raises(AssertionError, match="0 times"):
        apply_diff(tmp_path, "--- a.py\n@@\n-x = 3\n+x = 4\n")
    apply_diff(tmp_path, "--- a.py\n@@\n x = 1\n-y = 2\n+y = 3\n")
    assert (tmp_path / "a.py").read_text() == "x = 1\ny = 3\n"


def test_recipe_refuses_a_missing_placeholder_or_language():
    """Negative control for the reader: a placeholder the block lacks, or the wrong language, fails."""
    with pytest.raises(AssertionError, match="no longer has the placeholder 'RUN_ID'"):
        recipe("stop", "bash", RUN_ID="1")
    with pytest.raises(AssertionError, match="is a bash block"):
        recipe("stop", "diff")
    found = recipes("<!-- recipe: x -->\n   ```bash\n   echo a\n     echo b\n   ```\n")
    assert found == {"x": ("bash", "echo a\n  echo b\n")}, found


def _venv_with(work: Path, app: Path) -> dict[str, str]:
    """A fresh venv (system site-packages for flwr, numpy ...) where the README's ``pip install`` puts the plugin;
    Flower's console scripts bound to its interpreter, so the local SuperLink and the apps import the wheel."""
    from importlib import metadata

    env_dir = work / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True, symlinks=True).create(env_dir)
    bindir = env_dir / "bin"
    for ep in metadata.distribution("flwr").entry_points:
        if ep.group == "console_scripts":
            module, _, attr = ep.value.partition(":")
            (bindir / ep.name).write_text(
                f"#!{bindir / 'python'}\nimport sys\nfrom {module} import {attr.split('.')[0]}\nsys.exit({attr}())\n"
            )
            (bindir / ep.name).chmod(0o755)
    env = _clean_env(dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(env_dir)))
    env["VIRTUAL_ENV"] = str(env_dir)
    assert shutil.which("pip", path=env["PATH"]) == str(bindir / "pip")  # never the system's pip
    # the app's dependency on the plugin is the README's file URL; pip (no index) resolves it to the built wheel
    deps = tomllib.loads((app / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("flower-chain")]
    assert spec == f"flower-chain @ file://{work}/{WHEEL}", deps
    r = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "--no-index", "--dry-run", "--quiet", "--report", "-", spec],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (item,) = [i for i in json.loads(r.stdout)["install"] if i["metadata"]["name"] == "flower-chain"]
    assert item["download_info"]["url"] == f"file://{work}/{WHEEL}" and item["metadata"]["version"] == "0.1.0", item
    return env


def test_message_api_recipe(wheel, tmp_path):
    work = tmp_path
    shutil.copy(wheel, work / WHEEL)
    app = plain_app("quickstart_message", work, "swap-pyproject", "swap-message-api")
    with open(app / "quickstart" / "server_app.py", "a", encoding="utf-8") as f:  # the test's probe, not the README's
        f.write(
            "\nimport flower_chain\nfrom flwr.common.logger import log\n"
            "log(20, 'flower_chain from %s', flower_chain.__file__)\n"
        )
    env = _venv_with(work, app)
    link = LocalSuperLink(base_env=env, cwd=app, log_dir=work)
    try:
        bash(
            recipe("swap-install", "bash", **{"/abs/path": str(work)}), cwd=work, env=link.env, log=work / "install.log"
        )
        probe = subprocess.run(
            [str(work / "venv/bin/python"), "-c", "import flower_chain; print(flower_chain.__file__)"],
            capture_output=True,
            text=True,
            env=link.env,
            cwd=work,
        )
        assert Path(probe.stdout.strip()).resolve().is_relative_to((work / "venv").resolve()), probe
        out = bash(recipe("swap-run", "bash"), cwd=app, env=link.env, log=work / "flwr-run.log")
        run_id = run_id_of(out)
        assert link.status(run_id) == "finished:completed", out[-4000:]
        line = next(ln for ln in out.splitlines() if "flower_chain from" in ln)  # the ServerApp ran the wheel
        assert Path(line.split("flower_chain from ", 1)[1].strip()).resolve().is_relative_to((work / "venv").resolve())
        assert_log_has_the_commands(out, work, run_id)
        check_ledger(work, run_id, link.env, nodes=2)
        _stop_local(link, work)
    finally:
        link.stop()


def test_legacy_recipe(tmp_path):
    work = tmp_path
    app = plain_app("quickstart_legacy", work, "swap-pyproject", "swap-legacy")
    link = LocalSuperLink(base_env=_clean_env(dict(os.environ)), cwd=app, log_dir=work)
    try:
        bash(keys_only(work), cwd=work, env=link.env, log=work / "keys.log")
        out = bash(recipe("swap-run", "bash"), cwd=app, env=link.env, log=work / "flwr-run.log")
        run_id = run_id_of(out)
        assert link.status(run_id) == "finished:completed", out[-4000:]
        check_ledger(work, run_id, link.env, nodes=2)
        _stop_local(link, work)
    finally:
        link.stop()


def _stop_local(link: LocalSuperLink, work: Path) -> None:
    """The README's command stops the local SuperLink ``flwr run`` started, and everything it started."""
    pids = link.pids()
    assert pids, "flwr run started no local SuperLink under this FLWR_HOME"
    procs = family(pids)
    bash(recipe("stop-local", "bash"), cwd=work, env=link.env, log=work / "stop-local.log")
    assert_all_gone(procs)
    assert not link.pids()


def _ports() -> tuple[int, int]:
    """A SuperLink port and a base port ``b`` with ``b`` and ``b + 1`` free (the README's 9093, 9094 + i)."""
    link = free_port()
    for _ in range(200):
        base = free_port()
        if link not in (base, base + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + 1))
                except OSError:
                    continue
            return link, base
    raise RuntimeError("no two consecutive free ports")


def test_deployment_recipe(tmp_path):
    """A SuperLink, two SuperNodes on one host, ``flwr run . mine`` on the connection the recipe defines."""
    work = tmp_path
    app = plain_app("quickstart_message", work, "swap-pyproject", "swap-message-api")
    env = _clean_env(dict(os.environ))  # FLWR_HOME: this test's own (conftest)
    home = Path(env["FLWR_HOME"])
    assert not (home / "config.toml").exists()
    link_port, base = _ports()
    subs = {"/abs/path": str(work), "SERVER": "127.0.0.1", "9093": str(link_port), "9094": str(base)}
    started: list[int] = []  # process groups of the blocks, stopped in any case
    try:
        bash(keys_only(work), cwd=work, env=env, log=work / "keys.log")
        bash(
            recipe("deployment-superlink", "bash", **{k: v for k, v in subs.items() if k in ("/abs/path", "9093")}),
            cwd=work,
            env=env,
            log=work / "superlink.log",
            background=started,
        )
        wait_listening(link_port)
        bash(
            recipe("deployment-supernodes", "bash", **subs),
            cwd=work,
            env=env,
            log=work / "supernodes.log",
            background=started,
        )
        for port in (base, base + 1):  # each node's own --port
            wait_listening(port)
        out = bash(
            recipe("deployment-run", "bash", **{k: v for k, v in subs.items() if k in ("SERVER", "9093")}),
            cwd=app,
            env=env,
            log=work / "flwr-run.log",
            timeout=600,
        )
        assert "[superlink.mine]" in (home / "config.toml").read_text()
        run_id = run_id_of(out)
        assert_log_has_the_commands(out, work, run_id)
        check_ledger(work, run_id, env, nodes=2)
        pids = [int((work / name).read_text()) for name in ("superlink.pid", "supernode-0.pid", "supernode-1.pid")]
        procs = family(pids)
        assert len(procs) >= 3, procs
        bash(recipe("stop", "bash", **{"/abs/path": str(work)}), cwd=work, env=env, log=work / "stop.log")
        assert_all_gone(procs)
    finally:
        pids = [int(p.read_text()) for p in work.glob("*.pid") if p.read_text().strip().isdigit()]
        stop_process_trees(pids + started, grace=5)
        for pgid in started:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
