"""Every registered-model name is spelled in one place (stepvideo/registry/__init__.py), and one
factory builds the MlflowClient."""

from __future__ import annotations

import re

from conftest import REPO
from stepvideo import registry
from stepvideo.config import PromoteParams

PACKAGE = REPO / "stepvideo"
HOME = PACKAGE / "registry" / "__init__.py"


def test_names_are_spelled_only_in_the_registry_package():
    names = [registry.VAE, registry.TEXT_ENCODERS, registry.DPO, registry.BUNDLE, *registry.DIT_STAGES.values()]
    pattern = re.compile("|".join(re.escape(f'"{n}"') for n in names))
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path == HOME:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for m in pattern.finditer(code):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{i}: {m.group(0)}")
    # the params default is plain data (config imports no registry code): it must be the registry's name
    assert PromoteParams().registered == registry.BUNDLE
    found = [f for f in found if not f.startswith("stepvideo/config.py")]
    assert not found, "registered-model names spelled outside stepvideo/registry: " + "; ".join(found)


def test_one_mlflow_client_factory():
    offenders = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                 if "MlflowClient()" in p.read_text() and p != PACKAGE / "tracking" / "__init__.py"]
    assert not offenders, offenders
    assert (PACKAGE / "tracking" / "__init__.py").read_text().count("MlflowClient()") == 1
