"""Every script in examples/ runs, against the sandbox or the local backend: examples cannot rot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import EXAMPLES, SandboxInfo, assert_no_kernels, base_env, run_process

#: What each example must print when it works.
EXPECTED = {
    "deepnote_run.py": ["finished: succeeded", 'inputs={"name": "Ada"}'],
    "posthog_run.py": ["finished: succeeded", "'Hello, Ada!\\n'", "(cell 3 of 3)"],
    "datalore_run.py": ["finished: succeeded", "artifact: Hello.ipynb http://127.0.0.1:"],
    "many_runs.py": ["4 of 5 runs succeeded", "42: error: input 'name' must be a string"],
    "fake_backend.py": ["finished: succeeded"],
}
LOCAL = "local_run.py"
#: Examples tested where their machinery is: arq_worker.py in
#: tests/integrations/test_arq_fleet.py, airflow_dag.py by integration_tests/airflow in its own
#: virtualenv (.ci/airflow.sh).
ELSEWHERE = {"arq_worker.py", "airflow_dag.py"}


def test_every_example_is_tested() -> None:
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    assert scripts == {*EXPECTED, LOCAL, *ELSEWHERE}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_against_the_sandbox(script: str, sandbox: SandboxInfo) -> None:
    result = run_process([sys.executable, str(EXAMPLES / script)], sandbox.env, cwd=EXAMPLES)
    assert result.returncode == 0, result.output
    for text in EXPECTED[script]:
        assert text in result.stdout, result.stdout
    for token in sandbox.tokens():
        assert token not in result.output


def test_example_without_its_variables_says_what_to_set() -> None:
    result = run_process([sys.executable, str(EXAMPLES / "deepnote_run.py")], base_env())
    assert result.returncode == 2
    assert "set DEEPNOTE_NOTEBOOK_ID" in result.stderr


def test_local_example(runtime_dir: Path) -> None:
    env = base_env(JUPYTER_RUNTIME_DIR=str(runtime_dir))
    result = run_process([sys.executable, str(EXAMPLES / LOCAL), "Grace"], env, cwd=Path("/"))
    assert result.returncode == 0, result.output
    assert "finished: succeeded" in result.stdout
    assert "'1. Hello, Grace!\\n2. Hello, Grace!\\n'" in result.stdout
    assert "'**Hello, Grace!** (said 2 times)'" in result.stdout
    assert_no_kernels(runtime_dir)
