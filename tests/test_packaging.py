"""environment.yml (conda users) and pyproject.toml (pip users) must ask for the same Python packages."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements_by_name(lines):
    """Map a normalized package name to its full requirement string ('torch==2.14.1')."""
    out = {}
    for line in lines:
        name = re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0]
        out[name.lower().replace("_", "-")] = line.strip().replace(" ", "")
    return out


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    return _requirements_by_name(lines)


def _conda_pip_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml should have exactly one pip: section"
    return _requirements_by_name(pip_sections[0])


def test_environment_yml_matches_pyproject():
    assert _conda_pip_requirements() == _pyproject_requirements()


def test_environment_yml_has_the_native_libraries_ffcv_builds_against():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_names = {d.split("=")[0] for d in env["dependencies"] if isinstance(d, str)}
    assert {"python", "compilers", "pkg-config", "opencv", "libjpeg-turbo", "pip"} <= conda_names


def test_requirement_parser_sees_versions():
    # Guards the helper above: a changed pin must show up as a difference.
    a = _requirements_by_name(["torch==2.14.1"])
    b = _requirements_by_name(["torch==2.13.0"])
    assert a.keys() == b.keys() and a != b
