"""mkdocs hook (mkdocs.yml `hooks:`): after the build, every public name of greenhub
(`greenhub.__all__`, and the public modules' names in their `__all__` where they define
them) must have an entry in the generated reference (site/reference/index.html).

mkdocstrings leaves out, without a warning, a name it sees as an undocumented attribute
(`await_ = _core.await_`), so `mkdocs build --strict` alone does not catch a public name
missing from the reference page.
"""

from __future__ import annotations

import ast
import os
import re

from mkdocs.exceptions import PluginError

# The modules docs/reference.md renders, and the names each must show (None: its
# __all__).  greenhub.socket and greenhub.ssl re-export the standard modules' names:
# only their own ones.
MODULES = {
    "greenhub.vthread": None,
    "greenhub.server": None,
    "greenhub.monkey": ["patch_all", "is_patched", "get_original"],
    "greenhub.socket": ["socket", "socketpair", "create_connection", "create_server"],
    "greenhub.ssl": ["SSLContext", "SSLSocket", "create_default_context"],
}


def _all(path):
    """A module's __all__, read from its source (the docs build needs no compiled
    greenhub): the literal lists assigned and added at its top level."""
    names = []
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign):
            target = node.targets[0]
        elif isinstance(node, ast.AugAssign):
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name) and target.id == "__all__":
            names += ast.literal_eval(node.value)
    return names


def on_post_build(config, **kwargs):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package = os.path.join(root, "greenhub")
    path = os.path.join(config["site_dir"], "reference", "index.html")
    with open(path, encoding="utf-8") as f:
        ids = set(re.findall(r'id="(greenhub[\w.]*)"', f.read()))
    wanted = []
    for name in _all(os.path.join(package, "__init__.py")):
        module = f"greenhub.{name}"
        is_module = os.path.exists(os.path.join(package, name + ".py")) or os.path.isdir(
            os.path.join(package, name)
        )
        if not is_module or module in MODULES:
            wanted.append(module)
    for module, names in MODULES.items():
        if names is None:
            names = _all(os.path.join(root, *module.split(".")) + ".py")
        wanted += [f"{module}.{n}" for n in names]
    missing = [name for name in wanted if name not in ids]
    if missing:
        raise PluginError(
            f"docs/reference.md renders no entry for {', '.join(missing)} "
            "(mkdocstrings hides what it reads as an undocumented attribute)"
        )
