"""The peak RSS of a command, measured from a fresh process.

A child's ``ru_maxrss`` starts at its parent's resident size when it is
forked (Linux carries the high-water mark across ``execve``), so a command
run straight from a pytest process that has grown (GTK, salt, rpmbuild in
earlier tests) reports the test process's size, not its own. A small Python
process in between runs the command and reports its children's peak.
"""

import subprocess
import sys
from pathlib import Path

#: ``python -c PEAK_WRAPPER REPORT ARGV...``: runs ARGV, writes its peak RSS (KiB)
#: to REPORT, exits with its exit code.
PEAK_WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:], check=False).returncode
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def wrapped(report: Path, argv: list[str]) -> list[str]:
    """``argv`` run under the wrapper, its peak written to ``report``."""
    return [sys.executable, "-c", PEAK_WRAPPER, str(report), *argv]


def run_with_peak(argv: list[str], report: Path) -> tuple[int, str, int]:
    """(exit code, stdout + stderr, peak RSS in bytes) of ``argv``."""
    done = subprocess.run(
        wrapped(report, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
    )
    return done.returncode, done.stdout.decode(), int(report.read_text()) * 1024
