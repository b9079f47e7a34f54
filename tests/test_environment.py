"""environment.yml and pyproject.toml must name the same dependencies with the same specifiers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("test",)

_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?\s*"
    r"(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.*?))?\s*$"
)


def normalise(requirement: str) -> tuple[str, tuple[str, ...], tuple[str, ...], str]:
    """PEP 508 string -> (normalised name, sorted extras, sorted specifiers, marker)."""
    match = _REQUIREMENT.match(requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    name = re.sub(r"[-_.]+", "-", match["name"]).lower()
    extras = tuple(sorted(e.strip().lower() for e in (match["extras"] or "").split(",") if e.strip()))
    spec = tuple(sorted(s.replace(" ", "") for s in match["spec"].split(",") if s.strip()))
    marker = " ".join((match["marker"] or "").split())
    return name, extras, spec, marker


def pyproject_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    return requirements


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def pip_requirements(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    return [str(r) for r in sections[0]]


def test_normalise():
    assert normalise("PyYAML >= 6.0") == ("pyyaml", (), (">=6.0",), "")
    assert normalise("numpy<2, >=1.24") == normalise("numpy>=1.24,<2")
    assert normalise("Foo_Bar[x,a]==1; python_version<'3.11'") == (
        "foo-bar", ("a", "x"), ("==1",), "python_version<'3.11'"
    )


def test_pip_section_matches_pyproject():
    from_pyproject = [normalise(r) for r in pyproject_requirements()]
    from_env = [normalise(r) for r in pip_requirements(environment())]
    for label, reqs in (("pyproject.toml", from_pyproject), ("environment.yml", from_env)):
        names = [r[0] for r in reqs]
        assert len(names) == len(set(names)), f"{label} lists a package twice: {sorted(names)}"
    only_pyproject = set(from_pyproject) - set(from_env)
    only_env = set(from_env) - set(from_pyproject)
    assert not only_pyproject and not only_env, (
        f"dependency drift: only in pyproject.toml {sorted(only_pyproject)}, "
        f"only in environment.yml {sorted(only_env)}"
    )


def test_environment_header():
    env = environment()
    assert env["name"] == "lpm"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "pip" in conda
    pythons = [d for d in conda if re.match(r"python\s*[=<>]", d)]
    assert pythons == ["python=3.11"]
    # everything else is installed by pip, so the two files cannot drift through a conda package
    assert set(conda) == {"python=3.11", "pip"}
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "requires-python"
    ]
    low = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires.strip())
    assert low, f"unexpected requires-python {requires!r}"
    assert (3, 11) >= (int(low[1]), int(low[2]))
