"""Check that an sdist is coherent: the package, LICENSE, and every file the test suite loads.

Usage: python .ci/check_sdist.py dist/notebookops-X.tar.gz (run from the repository root).
The test suite must run from the unpacked sdist, so every tracked file under tests/ and
examples/ must be in it; the benchmark (bench/, with its own tests) stays out.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile

REQUIRED = ("LICENSE", "README.md", "pyproject.toml")


def main(path: str) -> int:
    with tarfile.open(path) as archive:
        shipped = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    tracked = subprocess.run(
        ["git", "ls-files", "notebookops", "tests", "examples"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    missing = sorted({*REQUIRED, *tracked} - shipped)
    unwanted = sorted(name for name in shipped if fnmatch.fnmatch(name, "bench/*"))
    for name in missing:
        print(f"missing from the sdist: {name}")
    for name in unwanted:
        print(f"should not be in the sdist: {name}")
    return 1 if missing or unwanted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
