import subprocess
import sys

import pytest

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


def test_importing_the_package_leaves_torchao_out_until_fp8_is_asked_for():
    pytest.importorskip("torchao")
    code = (
        "import sys\n"
        "import pipeline.components, pipeline.pipeline, serve.app\n"
        "import diffusers.utils.import_utils as d, transformers.utils.import_utils as t\n"
        "print('torchao' in sys.modules, d.is_torchao_available(), t.is_torchao_available())\n"
        "from pipeline.quantization import import_torchao\n"
        "print(import_torchao().quantization.Float8WeightOnlyConfig.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before_fp8, after_fp8 = result.stdout.splitlines()
    assert before_fp8 == "False False False"
    assert after_fp8 == "Float8WeightOnlyConfig"  # and torchao imports once asked for
    importing = subprocess.run(
        [sys.executable, "-c", "import pipeline.components, serve.app"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "torchao" not in importing.stderr and "Failed to load" not in importing.stderr


@pytest.mark.parametrize("package", ["serve.jobs", "serve.storage", "serve.inputs"])
def test_the_job_core_imports_no_http_layer(package: str) -> None:
    """The store, storage and input layers raise their own errors; only serve.api knows HTTP."""
    code = (
        f"import sys, pkgutil, importlib, {package} as root\n"
        "for m in pkgutil.walk_packages(root.__path__, root.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "web = {'fastapi', 'starlette', 'ray'}\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in web or n.startswith('serve.api'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"{package} pulled in the HTTP layer: {result.stdout.strip()}"


@pytest.mark.parametrize("module", ["serve.api.routes", "serve.client"])
def test_the_http_api_and_the_client_import_no_torch(module: str) -> None:
    """The ingress checks every input at submit (boxes, media) without the model's packages; a client
    program needs none of them either."""
    loaded = "{n.split('.')[0] for n in sys.modules}"
    code = f"import sys, {module}\nprint(sorted({{'torch', 'ray'}} & {loaded}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"
