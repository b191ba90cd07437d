"""pyroute2, without its package-wide import.

`import pyroute2` runs pyroute2/__init__.py, which imports the whole library (NDB with sqlite3, IPDB,
nftables, WireGuard, plan9, ...): about 10 MiB of heap in every sensor, on every node. The sensor uses
two corners of it: IPRoute (links, routes) and the rtnl message parser (hot-plug events). Those are
imported here under a bare package object that stands in for pyroute2's __init__: about 5 MiB.

Nothing else changes: pyroute2's own submodules load as usual, and the first time anything asks the
package for a top-level name (`from pyroute2 import NDB`), its real __init__ runs then. If the
submodules cannot be imported this way on some pyroute2 version, the plain import is used instead.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _bare_package(spec) -> types.ModuleType:
    pkg = types.ModuleType("pyroute2")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__file__, pkg.__spec__, pkg.__loader__, pkg.__package__ = spec.origin, spec, spec.loader, "pyroute2"

    def __getattr__(name: str):
        # a submodule (`from pyroute2 import config`): say so, and the import system loads it
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)
        # anything else is one of __init__'s names: run the real __init__ into this module now
        names = pkg.__dict__
        names.pop("__getattr__", None)
        exec(spec.loader.get_code("pyroute2"), names)  # noqa: S102 - pyroute2's own code
        try:
            return names[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    pkg.__getattr__ = __getattr__
    return pkg


def _names():
    # pyroute2.IPRoute is pyroute2.iproute.IPRoute: this works under either package object
    from pyroute2.iproute import IPRoute
    from pyroute2.netlink.rtnl import RTMGRP_LINK
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    return IPRoute, RTMGRP_LINK, MarshalRtnl


def _load():
    spec = None if "pyroute2" in sys.modules else importlib.util.find_spec("pyroute2")
    if spec is not None and spec.submodule_search_locations and spec.loader is not None:
        sys.modules["pyroute2"] = _bare_package(spec)
        try:
            return _names()
        except Exception:  # noqa: BLE001 - any surprise: forget the attempt, import the usual way
            for name in [n for n in sys.modules if n == "pyroute2" or n.startswith("pyroute2.")]:
                del sys.modules[name]
    return _names()  # with pyroute2's own __init__


IPRoute, RTMGRP_LINK, MarshalRtnl = _load()
