"""The `[cpu]` extra installs on the platforms people use: Apple-silicon macOS, Linux and Windows.

The extra's requirements are read from the package metadata that setup.py produces, their
environment markers evaluated for each platform, and pip's resolver asked (a dry run for that
platform's wheel tags, which reads the wheel's metadata without downloading the wheel) whether
the pinned minimum TensorFlow has a wheel there. It needs the package registry; without a
network it skips, saying so.
"""
import io
import json
import os
import subprocess
import sys

import pytest
from runs import ROOT
from packaging.markers import default_environment
from packaging.requirements import Requirement

PYTHON = "3.12"  # a Python every TensorFlow from the pinned minimum (2.16) to 2.21 has wheels for

# (name, pip --platform tag, marker environment, what the wheel's platform tag ends with)
PLATFORMS = [
    ("macOS arm64", "macosx_12_0_arm64", {"sys_platform": "darwin", "platform_system": "Darwin",
                                          "platform_machine": "arm64", "os_name": "posix"}, "_arm64"),
    ("Linux x86-64", "manylinux2014_x86_64", {"sys_platform": "linux", "platform_system": "Linux",
                                              "platform_machine": "x86_64", "os_name": "posix"}, "_x86_64"),
    ("Windows x86-64", "win_amd64", {"sys_platform": "win32", "platform_system": "Windows",
                                     "platform_machine": "AMD64", "os_name": "nt"}, "win_amd64"),
]
PIP = [sys.executable, "-m", "pip"]
NETWORK = ["--retries", "0", "--timeout", "30"]


def package_requirements():
    """`Requires-Dist` of the package's metadata, as setup.py writes it (PKG-INFO), parsed."""
    from distutils.core import run_setup  # setuptools' copy; importing setuptools provides it

    cwd = os.getcwd()
    os.chdir(ROOT)  # setup.py reads README.md relative to the working directory
    try:
        dist = run_setup(os.path.join(ROOT, "setup.py"), stop_after="config")
    finally:
        os.chdir(cwd)
    text = io.StringIO()
    dist.metadata.write_pkg_file(text)
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.getvalue().splitlines()
            if line.startswith("Requires-Dist:")]


def cpu_requirements(environment):
    """The `[cpu]` extra's requirements whose markers hold in `environment` (an explicit marker environment)."""
    env = dict(default_environment(), python_version=PYTHON, python_full_version=PYTHON + ".0", **environment)
    plain = [r for r in package_requirements() if r.marker is None or not r.marker.evaluate(dict(env, extra=""))]
    return [r for r in plain if r.marker is not None and r.marker.evaluate(dict(env, extra="cpu"))]


def resolve_wheel(requirement, platform, tmp_path):
    """The wheel file name pip's resolver picks for `requirement` on `platform`, or None if there is none."""
    report = tmp_path / f"{platform}.json"
    proc = subprocess.run(
        PIP + ["install", "--dry-run", "--quiet", "--report", str(report), "--ignore-installed", "--no-deps",
               "--only-binary=:all:", "--platform", platform, "--python-version", PYTHON,
               "--target", str(tmp_path / "target"), requirement] + NETWORK,
        capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return None
    installs = json.loads(report.read_text())["install"]
    return [os.path.basename(i["download_info"]["url"]) for i in installs]


@pytest.fixture(scope="module")
def registry():
    """Skip, saying why, when the package registry cannot be reached.

    pip reports an unreachable index as "no matching distribution", like a platform without a
    wheel, so reachability is asked apart: TensorFlow always has Linux wheels.
    """
    proc = subprocess.run(PIP + ["index", "versions", "tensorflow", "--only-binary=:all:", "--platform",
                                 "manylinux2014_x86_64", "--python-version", PYTHON] + NETWORK,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip("no network: pip cannot list TensorFlow's Linux wheels from the package registry "
                    f"({(proc.stderr.strip().splitlines() or ['no output'])[-1]}); CI runs these tests")


def pinned_minimum(requirement):
    """`tensorflow-cpu>=2.16` -> `tensorflow-cpu==2.16.*`: the oldest release series the extra allows."""
    (minimum,) = [s.version for s in requirement.specifier if s.operator == ">="]
    return f"{requirement.name}=={minimum}.*"


def test_the_cpu_extra_picks_the_build_each_platform_has():
    names = {label: [r.name for r in cpu_requirements(env)] for label, _, env, _ in PLATFORMS}
    assert names == {"macOS arm64": ["tensorflow"], "Linux x86-64": ["tensorflow-cpu"],
                     "Windows x86-64": ["tensorflow-cpu"]}


@pytest.mark.parametrize("label,platform,environment,tag", PLATFORMS, ids=[p[0] for p in PLATFORMS])
def test_the_cpu_extra_resolves_to_a_wheel_of_the_pinned_minimum(label, platform, environment, tag, registry, tmp_path):
    (requirement,) = cpu_requirements(environment)
    wanted = pinned_minimum(requirement)
    wheels = resolve_wheel(wanted, platform, tmp_path)
    assert wheels, f"{label}: no wheel of {wanted} for {platform}, Python {PYTHON}"
    (wheel,) = wheels
    series = wanted.split("==")[1].rstrip("*")
    assert wheel.startswith(f"{requirement.name.replace('-', '_')}-{series}") and wheel.endswith(".whl"), wheel
    assert wheel.endswith(f"{tag}.whl"), (platform, wheel)
