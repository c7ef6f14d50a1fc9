"""The README is code: every fenced python and bash block runs as written (offline, in a fresh folder),
and CI runs exactly the README's test command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_readme_has_the_two_commands_first_and_ci_runs_the_second():
    language, first = BLOCKS[0]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert language == "bash" and len(commands) == 2
    assert commands[0].endswith("&& storm-hf demo")  # the main job (tests/test_bundled_model.py runs it)
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci[-1] == commands[1]
    # Before it, only the README's one command that installs the browser test's Chromium, where it can.
    install = next(code.strip() for language, code in BLOCKS if language == "sh" and "install -y chromium" in code)
    assert len(ci) == 2 and ci[0].startswith("command -v chromium >/dev/null || {")
    assert ci[0].replace("DEBIAN_FRONTEND=noninteractive ", "").split("{ ")[1].split(";")[0] == install


@pytest.mark.parametrize("number", [i for i, (language, _) in enumerate(BLOCKS) if language == "python"])
def test_python_snippet_runs(number, tmp_path):
    code = BLOCKS[number][1]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env=OFFLINE, timeout=300)
    assert result.returncode == 0, f"README python block {number}:\n{code}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("number", [i for i, (language, _) in enumerate(BLOCKS) if language == "bash" and i > 0])
def test_bash_snippet_runs(number, tmp_path):
    for name in ("examples", "src", "app.py", "space"):  # the README's paths are from the repository root
        (tmp_path / name).symlink_to(ROOT / name)
    for line in BLOCKS[number][1].splitlines():
        command = line.split("  #")[0].strip()
        if not command or command.startswith("#"):
            continue
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True,
                                env=OFFLINE, timeout=300)
        assert result.returncode == 0, f"README bash block {number}: {command}\n{result.stderr[-3000:]}"
