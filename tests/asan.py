"""C extensions built with AddressSanitizer, and test files run again against them.

A test file that supports it loads its module through `load(env_var, name)`: the normal build, or the
file named by `env_var` (the ASan build). `rerun(test_file, ...)` builds `sources` with
-fsanitize=address and runs that file's other tests in a subprocess with libasan preloaded: an
out-of-bounds read or write, a use after free (or, with leaks=True, a leak) aborts it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(env_var: str, name: str):
    """The extension module `name` (e.g. "ossensor._filereader"): the ASan build when env_var names one."""
    path = os.environ.get(env_var)
    if not path:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod  # code under test importing it by name gets this build too
    return mod


def libasan() -> str:
    """The path of gcc's libasan (to preload); skips the test without gcc and libasan."""
    gcc = shutil.which("gcc")
    path = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip() \
        if gcc else ""
    if not os.path.isabs(path) or not os.path.exists(path):
        pytest.skip("gcc with libasan needed")
    return path


def env(libasan_path: str, **extra: str) -> dict[str, str]:
    """The environment of a process run under ASan: libasan preloaded, PyMem_* straight to malloc."""
    return dict(os.environ, LD_PRELOAD=libasan_path, PYTHONPATH=str(ROOT), PYTHONMALLOC="malloc",
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", **extra)


def extension(name: str) -> tuple[list[str], list[str]]:
    """(sources, libraries) of the extension `name` as setup.py declares it: the ASan build compiles
    exactly what `pip install .` compiles (read with ast, setup.py is not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Extension" and \
                ast.literal_eval(call.args[0]) == name:
            kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("sources", "libraries")}
            return kw["sources"], kw.get("libraries", [])
    raise LookupError(f"setup.py declares no extension {name}")


def build(tmp_path: Path, name: str) -> tuple[Path, str]:
    """(the ASan-built module file, libasan's path); skips the test without gcc and libasan."""
    libasan_path = libasan()
    gcc = shutil.which("gcc")
    sources, libraries = extension(name)
    so = tmp_path / (name.rsplit(".", 1)[-1] + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = [gcc, "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer",
           "-Wall", "-Wextra", "-Werror", "-std=gnu11", f"-I{sysconfig.get_paths()['include']}",
           *[str(ROOT / s) for s in sources], "-o", str(so), *[f"-l{lib}" for lib in libraries]]
    subprocess.run(cmd, check=True)
    return so, libasan_path


def rerun(test_files: str | list[str], env_var: str, so: Path, libasan: str, extra_env: dict[str, str] | None = None,
          select: str = "not asan", leaks_in: str | tuple[str, ...] = (), timeout: float = 280,
          asan_options: str = "") -> None:
    """Run the tests of `test_files` matching `select` with env_var=so under ASan; fail with their output.
    Processes those tests start inherit the settings: each writes its report to a file of its own.

    leaks_in: source files (e.g. "filereader.c"): LeakSanitizer runs at exit, and any leak allocated
    from one of them fails the test (with PYTHONMALLOC=malloc, so that its PyMem_* allocations are seen
    too). The interpreter's own leftovers at exit are not ours to judge: only stacks through those files count.
    asan_options: more ASAN_OPTIONS, e.g. "fast_unwind_on_malloc=0" when the memory is allocated inside a
    library built without frame pointers (libpcap's pcap_compile): the fast unwinder stops in it, before
    the stack reaches our files."""
    if os.environ.get(env_var):
        pytest.skip("already the ASan run")
    reports = so.parent / "asan-reports"
    reports.mkdir(exist_ok=True)
    run_env = env(libasan, **{env_var: str(so)}, **(extra_env or {}), LSAN_OPTIONS="exitcode=0")
    run_env["ASAN_OPTIONS"] = f"detect_leaks={int(bool(leaks_in))}:abort_on_error=1:log_path={reports}/report" \
        + (f":{asan_options}" if asan_options else "")
    files = [test_files] if isinstance(test_files, str) else test_files
    leaks_in = (leaks_in,) if isinstance(leaks_in, str) else leaks_in
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        *[str(Path(f).resolve()) for f in files], "-k", select],
                       capture_output=True, text=True, env=run_env, cwd=str(ROOT / "tests"), timeout=timeout)
    text = "\n\n".join(f.read_text(errors="replace") for f in sorted(reports.iterdir()))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:] + text[-3000:]
    assert "passed" in r.stdout
    assert "ERROR: AddressSanitizer" not in text, text[-4000:]
    if leaks_in:
        ours = [block for block in text.split("\n\n")
                if "leak of" in block and any(f"/{name}:" in block for name in leaks_in)]
        assert not ours, "\n\n".join(ours)[-4000:]
