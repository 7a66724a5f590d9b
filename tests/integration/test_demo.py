"""`polybridge demo` end to end in a subprocess: its summary reports equality."""

from __future__ import annotations

import subprocess
import sys


def test_demo_reports_equality_with_ground_truth_after_a_kill() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "--log-level", "WARNING", "demo", "--duration", "6"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[:6000]
    assert "[kill -9]" in result.stdout
    assert "RESULT: EQUAL to ground truth after kill -9 and restart" in result.stdout
    assert result.stdout.count(": EQUAL expected=") == 4
