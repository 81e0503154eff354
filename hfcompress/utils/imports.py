"""Run code once another module has been imported, without importing it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from typing import Any, Callable, Optional


def lazy_exports(namespace: dict, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module ``__getattr__`` and ``__dir__`` (PEP 562) that import each public name from its submodule on first use.

    ``exports`` maps a public name to the submodule (relative to the package) that defines it, so
    importing the package, or building the CLI, does not load torch or transformers.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


def module_missing(module: str, what: str, install: str) -> Optional[str]:
    """Why ``what`` cannot be used here (``module`` does not import), with the ``install`` command; None when it imports."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"{what} is not installed ({e.msg}): {install}"
    return None


def optimum_onnx_missing() -> Optional[str]:
    """Why Optimum's ONNX exporter and ORTModel classes cannot be used here, or None when they can.

    The reason is a sentence a user can act on: optimum-onnx 0.1.0 requires transformers<4.58.
    """
    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.exporters.onnx") is None:
        return 'optimum-onnx is not installed (pip install -e ".[optimum]" -c constraints-optimum.txt, on transformers 4.57)'
    try:
        importlib.import_module("optimum.onnxruntime")
    except Exception as e:  # noqa: BLE001 - any failure (an incompatible transformers, say) means the same to the caller
        return f"optimum.onnxruntime does not import beside this transformers ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    return None


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` as soon as top-level module ``name`` is imported (now, if it already is).

    ``hfcompress`` uses this to register its model types with transformers' Auto classes whenever
    transformers is loaded, while ``import hfcompress`` itself stays free of transformers and torch.
    An exception in ``callback`` becomes a warning: it must not break the other module's import.
    """
    if name in sys.modules:
        _run(name, callback)
    elif not any(isinstance(f, _AfterImport) and f.name == name and f.callback is callback for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))


def _run(name: str, callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception as e:  # noqa: BLE001 - reported, not raised: the import of `name` itself succeeded
        warnings.warn(f"hfcompress could not finish setting up after importing {name}: {e!r}", RuntimeWarning, stacklevel=3)


class _AfterImport:
    """A ``sys.meta_path`` finder that finds nothing itself: it lets the other finders find ``name``
    and makes the found loader call the callback after running the module's code.

    It stays in ``sys.meta_path`` until the module has run: ``importlib.util.find_spec(name)`` (an
    availability check many libraries make) finds specs that are never loaded.
    """

    def __init__(self, name: str, callback: Callable[[], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = next((s for s in (_find(f, fullname, path, target) for f in sys.meta_path if f is not self) if s is not None), None)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_call(module) -> None:
            exec_module(module)
            if loader.__dict__.get("exec_module") is exec_then_call:
                del loader.exec_module  # back to the loader's own method
            if self in sys.meta_path:
                sys.meta_path.remove(self)
                _run(self.name, self.callback)

        try:
            loader.exec_module = exec_then_call
        except (AttributeError, TypeError):  # a loader without an instance __dict__: nothing to hook into
            warnings.warn(f"hfcompress cannot hook the import of {fullname}; call its setup yourself", RuntimeWarning, stacklevel=2)
        return spec


def _find(finder, fullname, path, target):
    find_spec = getattr(finder, "find_spec", None)
    return find_spec(fullname, path, target) if find_spec is not None else None
