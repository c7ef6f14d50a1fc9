"""The README is code: every fenced python and bash block runs as written (offline, in a fresh folder),
and CI runs exactly the README's test command."""

import json
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


# Runs each python block in a child forked from one process that has imported torch, transformers and storm_hf (and
# run no torch op, so no thread pool is forked): a fresh process per block as `python -c` would give, without paying
# the imports every time (a block that touches the environment runs in a process of its own). Requests and answers are
# JSON lines on its stdin / stdout.
SNIPPET_RUNNER = r'''
import json, os, sys, traceback
import torch, transformers, storm_hf  # noqa: F401  (imported once, before the forks)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(request["cwd"])
        with open(request["log"], "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        sys.argv = ["-c"]
        status = 0
        try:
            exec(compile(request["code"], "<README block>", "exec"), {"__name__": "__main__"})
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            status = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
'''


@pytest.fixture(scope="module")
def snippet_runner():
    runner = subprocess.Popen([sys.executable, "-c", SNIPPET_RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=OFFLINE)
    yield runner
    runner.stdin.close()
    runner.wait(timeout=60)


@pytest.mark.parametrize("number", [i for i, (language, _) in enumerate(BLOCKS) if language == "python"])
def test_python_snippet_runs(number, tmp_path, snippet_runner):
    code = BLOCKS[number][1]
    if "environ" in code:  # it may set a variable an import reads: a process of its own
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                env=OFFLINE, timeout=300)
        assert result.returncode == 0, f"README python block {number}:\n{code}\n{result.stderr[-3000:]}"
        return
    log = tmp_path / "output.txt"
    snippet_runner.stdin.write(json.dumps({"code": code, "cwd": str(tmp_path), "log": str(log)}) + "\n")
    snippet_runner.stdin.flush()
    answer = snippet_runner.stdout.readline()
    assert answer, f"README python block {number}: the snippet runner died\n{code}"
    returncode = json.loads(answer)["returncode"]
    assert returncode == 0, f"README python block {number}:\n{code}\n{log.read_text()[-3000:]}"


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
