"""How the operator's tools module (TOOLS_MODULE) reaches a sandbox.

Mounted read-only at GUEST_TOOLS_DIR (or, without the namespaces layer, read from its
host folder); the guest appends that folder to ``sys.path`` and imports the module
by name (rlm_service/repl_guest/tools.py). The start-up probe imports it the same
way, so a module that cannot work in the sandbox stops the server with its error.
"""

from __future__ import annotations

from rlm_service.repl.bwrap import Bind
from rlm_service.tools import SandboxModule

GUEST_TOOLS_DIR = "/opt/rlm/tools"
# The probe's exit status when the tools module does not import in the sandbox.
TOOLS_BROKEN = 17


def tools_bind(module: SandboxModule | None) -> list[Bind]:
    return [] if module is None else [Bind(module.source, f"{GUEST_TOOLS_DIR}/{module.entry}")]


def tools_args(module: SandboxModule | None, namespaces: bool) -> list[str]:
    """The guest's options naming the module and the folder it is imported from."""
    if module is None:
        return []
    folder = GUEST_TOOLS_DIR if namespaces else str(module.source.parent)
    return ["--tools-dir", folder, "--tools-module", module.name]


def probe_code(module: SandboxModule | None, namespaces: bool) -> str:
    """Probe code: the module imports, with every function the host read from it."""
    if module is None:
        return ""
    folder = tools_args(module, namespaces)[1]
    names = [t.name for t in module.tools]
    return (
        "\nimport sys, traceback\n"
        f"sys.path.append({folder!r})\n"
        "try:\n"
        f"    m = __import__({module.name!r})\n"
        "except BaseException:\n"
        "    traceback.print_exc(limit=-3)\n"
        f"    sys.exit({TOOLS_BROKEN})\n"
        f"missing = [n for n in {names!r} if not callable(getattr(m, n, None))]\n"
        "if missing:\n"
        "    print('after import, these are not functions:', ', '.join(missing),\n"
        "          file=sys.stderr)\n"
        f"    sys.exit({TOOLS_BROKEN})\n")
