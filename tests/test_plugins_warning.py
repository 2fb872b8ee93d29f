"""A broken plugin's PluginWarning names the plugin, never a file and line of mmsb's own source (issue 19)."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plugin_warning_shows_the_plugin_not_mmsb_source(tmp_path):
    info = tmp_path / "fake_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mmsb]\nbroken_one = fake_missing_module_xyz\nbroken_hook = fake_hook\n")
    (tmp_path / "fake_hook.py").write_text(textwrap.dedent("""
        from mmsb.plugins import hookimpl

        @hookimpl
        def mmsb_register_semirings(registry):
            raise ValueError("fake hook failure")
        """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]), PYTHONWARNINGS="default")
    env.pop("MMSB_DISABLE_PLUGIN_AUTOLOAD", None)
    code = "import mmsb\nprint(len(mmsb.semirings.names()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    warning_lines = [ln for ln in out.stderr.splitlines() if "PluginWarning" in ln]
    assert len(warning_lines) == 2, out.stderr
    assert any(ln.startswith("<mmsb plugin broken_one>:0: PluginWarning: ") for ln in warning_lines), out.stderr
    assert any(ln.startswith("<mmsb plugin broken_hook>:0: PluginWarning: ") for ln in warning_lines), out.stderr
    assert "fake hook failure" in out.stderr
    assert os.path.join("mmsb", "") not in out.stderr.replace("mmsb.plugins.failures", ""), out.stderr
