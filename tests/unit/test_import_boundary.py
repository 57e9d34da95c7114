import subprocess
import sys

FORBIDDEN = ("ray", "fastapi", "pydantic", "prometheus_client", "starlette", "celery", "redis")


def test_pipeline_imports_no_serving_packages():
    code = (
        "import sys, pkgutil, importlib, pipeline\n"
        "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'):\n"
        "    if m.name != 'pipeline.__main__':\n"
        "        importlib.import_module(m.name)\n"
        f"bad = sorted({{n.split('.')[0] for n in sys.modules}} & set({FORBIDDEN!r}))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"pipeline pulled in serving packages: {result.stdout.strip()}"
