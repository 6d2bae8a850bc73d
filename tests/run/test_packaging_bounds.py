"""Setup on the Pythons users have (issue 34): versions bounded to what is tested, and Agent-lightning
1.x (another product under the same name) refused in one line at import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dependencies_that_resolved_to_untested_majors_are_bounded() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {d.split(">")[0].split("=")[0].split("<")[0].strip(): d for d in deps}
    assert "<3" in by_name["openai"] and "<2.14" in by_name["torch"]


def test_importing_next_to_agentlightning_1_fails_in_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "agentlightning-1.2.0.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: agentlightning\nVersion: 1.2.0\n")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        try:
            import agl_tinker
        except ImportError as e:
            print(e)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.count("\n") == 1, out.stdout + out.stderr
    assert "agentlightning 1.2.0 is installed" in out.stdout and "own virtual environment" in out.stdout
