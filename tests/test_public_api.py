"""Every public module's ``__all__`` matches what it really exports."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import emoadapt

#: modules (and packages, with their modules) whose imports need optional extras (checked
#: when these are installed)
_OPTIONAL = {"emoadapt.extract": "pyarrow", "emoadapt.web": "starlette"}

#: public classes/functions defined in a module but deliberately kept out of its __all__
#: (entry points and plumbing that are reached another way), by module
_NOT_EXPORTED: dict[str, set[str]] = {
    # the command line's parser and command handlers: reached through main() (the console
    # script), importable by tests, not an API
    "emoadapt.cli": {
        "build_parser",
        "cli_message",
        "quiet_native_logs",
        "cmd_adapt",
        "cmd_annotate",
        "cmd_correct",
        "cmd_enroll",
        "cmd_export",
        "cmd_extract",
        "cmd_forget",
        "cmd_models",
        "cmd_live",
        "cmd_predict",
        "cmd_serve",
        "cmd_users",
    },
}


def _public_modules() -> list[str]:
    names = ["emoadapt"]
    for m in pkgutil.walk_packages(emoadapt.__path__, "emoadapt."):
        if not any(part.startswith("_") for part in m.name.split(".")):
            names.append(m.name)
    return sorted(names)


@pytest.mark.parametrize("name", _public_modules())
def test_all_lists_exactly_the_public_api(name):
    extra = next((v for k, v in _OPTIONAL.items() if name == k or name.startswith(k + ".")), None)
    if extra is not None:
        pytest.importorskip(extra)
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    defined = {
        n
        for n, obj in vars(mod).items()
        if not n.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name
    }
    unlisted = sorted(defined - set(exported) - _NOT_EXPORTED.get(name, set()))
    assert not unlisted, f"public in {name} but not in its __all__ (export them or make them private): {unlisted}"
