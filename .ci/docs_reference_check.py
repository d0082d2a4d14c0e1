"""mkdocs hook (mkdocs.yml `hooks:`): after the build, every public name of greenhub
(`greenhub.__all__`, and the public modules' names in their `__all__` where they define
them) must have an entry in the generated reference (site/reference/index.html).

mkdocstrings leaves out, without a warning, a name it sees as an undocumented attribute
(`await_ = _core.await_`), so `mkdocs build --strict` alone does not catch a public name
missing from the reference page.
"""

from __future__ import annotations

import importlib
import os
import re
import types

from mkdocs.exceptions import PluginError

# The modules docs/reference.md renders, and the names each must show.  greenhub.socket
# and greenhub.ssl re-export the standard modules' names: only their own ones.
MODULES = {
    "greenhub.vthread": None,
    "greenhub.server": None,
    "greenhub.monkey": ["patch_all", "is_patched", "get_original"],
    "greenhub.socket": ["socket", "socketpair", "create_connection", "create_server"],
    "greenhub.ssl": ["SSLContext", "SSLSocket", "create_default_context"],
}


def on_post_build(config, **kwargs):
    import greenhub

    path = os.path.join(config["site_dir"], "reference", "index.html")
    with open(path, encoding="utf-8") as f:
        ids = set(re.findall(r'id="(greenhub[\w.]*)"', f.read()))
    wanted = []
    for name in greenhub.__all__:
        try:
            obj = getattr(greenhub, name)
        except AttributeError:  # greenhub.socket, .ssl, .server: imported on first use
            obj = importlib.import_module(f"greenhub.{name}")
        if not isinstance(obj, types.ModuleType) or obj.__name__ in MODULES:
            wanted.append(f"greenhub.{name}")
    for module, names in MODULES.items():
        mod = importlib.import_module(module)
        wanted += [f"{module}.{n}" for n in (names or mod.__all__)]
    missing = [name for name in wanted if name not in ids]
    if missing:
        raise PluginError(
            f"docs/reference.md renders no entry for {', '.join(missing)} "
            "(mkdocstrings hides what it reads as an undocumented attribute)"
        )
