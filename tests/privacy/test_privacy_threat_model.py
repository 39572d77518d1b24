"""The threat model is written once for users (README) and once for readers of the code (pftray.privacy): the same
text, and it names every artefact of the run-directory contract."""

from __future__ import annotations

import re
from pathlib import Path

import pftray.privacy

README = Path(__file__).resolve().parents[2] / "README.md"


def _norm(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", line).strip() for line in text.splitlines() if line.strip()]


def test_readme_threat_model_is_the_privacy_package_docstring():
    readme = README.read_text()
    section = readme.split("<!-- threat-model")[1].split("-->", 1)[1].split("<!-- /threat-model -->")[0]
    doc = pftray.privacy.__doc__
    body = " ".join(_norm(doc.split("Threat model (client-level DP)", 1)[1]))
    assert " ".join(_norm(section)) == body


def test_threat_model_names_every_artefact_and_both_deployments():
    doc = pftray.privacy.__doc__
    for name in ("checkpoints/", "rounds.parquet", "clients.parquet", "eval.parquet", "samples/", "privacy.json",
                 "TRUSTED", "HONEST-BUT-CURIOUS", "Add or remove one client", "CSPRNG", "Poisson"):
        assert name in doc, name
