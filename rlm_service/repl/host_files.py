"""Whether the sandbox uid can reach the files a REPL runs from, and which interpreter.

As root a REPL runs under a uid that owns nothing, so the interpreter, the venv's
site-packages and the guest part of the package must be readable by others; when their
parent folders are not (a 0700 home), ``sandbox.py`` mounts them first.
"""

from __future__ import annotations

import compileall
import os
import stat
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# The parts of the package the in-sandbox REPL imports (see repl_guest/).
GUEST_PACKAGE_PARTS = ("__init__.py", "repl_guest", "_gen")


class SandboxUnavailable(RuntimeError):
    """The host cannot provide a required isolation layer."""


def _world_accessible(path: Path) -> bool:
    """Whether a uid with no special rights can reach and read ``path``."""
    try:
        path = path.resolve()
        for parent in [*reversed(path.parents), path]:
            mode = os.stat(parent).st_mode
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                return False
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def folders_open(path: Path) -> bool:
    """Whether a uid with no special rights can walk the folders down to ``path``."""
    try:
        return all(os.stat(p).st_mode & stat.S_IXOTH for p in path.resolve().parents)
    except OSError:
        return False


def _others_may(path: Path, bits: int) -> bool:
    """Whether a uid with no special rights has ``bits`` on ``path`` itself (the
    folders above it do not matter once it is mounted into the sandbox)."""
    try:
        return os.stat(path).st_mode & bits == bits
    except OSError:
        return False


def site_dir() -> Path:
    import grpc

    return Path(grpc.__file__).resolve().parent.parent


def pick_python(configured: str | None, is_root: bool) -> str:
    """The interpreter REPLs run: one the sandbox uid may execute."""
    if configured:
        return configured
    want = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [c for c in (os.path.realpath(sys.executable), f"/usr/local/bin/{want}",
                         f"/usr/bin/{want}") if os.path.exists(c)]
    if is_root:
        # Any interpreter the sandbox uid may execute reaches the sandbox; one under
        # /usr adds nothing to its root, where /root/.pyenv would show up, say.
        found = [c for c in found if _others_may(Path(c).resolve(), stat.S_IXOTH)]
        found.sort(key=lambda c: not Path(c).resolve().is_relative_to("/usr"))
    return found[0] if found else os.path.realpath(sys.executable)


def check_readable(python: Path, site: Path, is_root: bool, active: list[str],
                   tools: Path | None = None) -> None:
    """Raises if the sandbox uid could not read the interpreter, the venv, the package
    or the operator's tools module."""
    if not is_root or "uid" not in active:
        return
    if tools is not None:
        files = [tools, *tools.rglob("*.py")] if tools.is_dir() else [tools]
        mounted = "readonly-fs" in active
        for p in files:
            bits = stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0)
            if not (_others_may(p, bits) if mounted else _world_accessible(p)):
                raise SandboxUnavailable(
                    f"TOOLS_MODULE: {p} is not readable by the sandbox uid; make it "
                    "readable by others (the tools run as the model's code does)")
    if "readonly-fs" in active:
        # Mounted into the sandbox: only the trees' own permissions count.
        need = [(python.resolve(), stat.S_IXOTH),
                (site, stat.S_IROTH | stat.S_IXOTH),
                *((PACKAGE_DIR / part,
                   stat.S_IROTH | (stat.S_IXOTH if (PACKAGE_DIR / part).is_dir() else 0))
                  for part in GUEST_PACKAGE_PARTS)]
        for p, bits in need:
            if not _others_may(p, bits):
                raise SandboxUnavailable(
                    f"{p} is not readable by the sandbox uid (mode "
                    f"{oct(os.stat(p).st_mode & 0o777) if p.exists() else 'missing'}); "
                    "make it readable by others or set SANDBOX_PYTHON")
        return
    # Without bubblewrap the REPL reaches the files through their host paths.
    for p in (python, site, PACKAGE_DIR):
        if not _world_accessible(p):
            raise SandboxUnavailable(
                f"{p} is not readable by the sandbox uid; set SANDBOX_PYTHON to a "
                "world-readable interpreter or install the service outside /root"
            )


def precompile_guest() -> None:
    """Writes the guest's bytecode next to its sources, once per service start.

    The guest runs with ``-B`` on a read-only tree, so without this it compiles every
    module it imports on every start; the host never imports most of them itself.
    Where the package is read-only (an image built without it), nothing is written."""
    for part in GUEST_PACKAGE_PARTS:
        path = PACKAGE_DIR / part
        if path.is_dir():
            compileall.compile_dir(path, quiet=2, workers=1)
