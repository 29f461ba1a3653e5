"""The README stays true where a test can tell: its Python examples run, its links stay inside the
repository and point at files that exist, and its test command is what .ci/run runs."""
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", README, re.S))
def test_python_examples_run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write files (net.npz) into the working folder
    exec(compile(block, "README.md", "exec"), {})


def test_links_stay_inside_the_repository():
    links = re.findall(r"\]\(([^)]+)\)", README)
    assert links, "the README links docs/ARCHITECTURE.md at least"
    for link in links:
        assert "://" not in link and not link.startswith(("/", "..")), f"README links outside the repository: {link}"
        assert (REPO / link.split("#")[0]).exists(), f"README links a missing file: {link}"
    assert "../shared" not in README


def test_ci_runs_the_readme_test_command():
    test_line = next(line for line in README.splitlines() if line.rstrip().endswith("# tests"))
    command = test_line.split("#")[0].strip()
    ci = (REPO / ".ci" / "run").read_text()
    for part in command.split(" && ")[1:]:  # after the install: each test step appears in .ci/run
        assert part.strip() in ci, f".ci/run does not run {part.strip()!r} from the README"
