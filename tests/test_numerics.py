"""Portable numerics: the same bytes on every x86-64 CPU with AVX2 and FMA. Checked against golden
md5s (so every CI run checks the baseline on whatever CPU it lands on), under Debian's qemu-user
as an Intel and an AMD CPU, and with each pin left out in turn (it must then break)."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from mnistflow.tools import numcheck
from mnistflow.core import numerics

# What `python -m mnistflow.tools.numcheck` prints with portable numerics at 2 threads: the same on an
# Intel Xeon (AVX-512, AMX) and under qemu as Haswell-v4 and EPYC-Rome.
GOLDEN = {
    "preprocess": "980630960200bcbc5839b14b553bac0d",
    "mlp": "a35e7f4fbc3faa9d48130152c0de1e05",
    "mlp evaluation": "9a145b7dcfb04f54557ad8d7b3629dcf",
    "cnn": "421e10bacf3972316e23995ff404f18b",
    "cnn evaluation": "390f8595ff10796a2a31c5e297f734aa",
    "lenet": "43ef101660422eed3afccff8f6dbf5ea",
    "lenet evaluation": "27c3107c2623be5983790d6f987edfd2",
}
portable_cpu = pytest.mark.skipif(not numerics.portable_cpu(), reason="not an x86-64 CPU with AVX2 and FMA")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                                reason="qemu-x86_64 is not installed (make test-tools installs Debian's qemu-user)")
AVX512 = "avx512f" in open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else False


@portable_cpu
def test_portable_training_and_evaluation_give_the_golden_bytes_on_this_cpu():
    result = numcheck.run()
    assert (result["cpu_isa"], result["mkl_branch"], result["threads"]) == ("AVX2", "COMPATIBLE", "2")
    assert result["md5"] == GOLDEN


@pytest.mark.slow
@needs_qemu
@pytest.mark.parametrize("cpu", ["Haswell-v4", "EPYC-Rome"])  # an Intel and an AMD CPU with AVX2 and FMA
def test_an_emulated_intel_and_amd_cpu_give_the_same_bytes(cpu):
    assert numcheck.run(cpu)["md5"] == GOLDEN


# Each pin, left out, on a CPU where it matters: the run must then differ from the golden bytes,
# which every CPU gives with the pins (the emulated CPUs above), so each fails when its pin holds
# nothing. The two AVX2 caps are no caps on an AVX2 CPU: they need a native AVX-512 one.
DROPS = {
    "MKL_CBWR": ("EPYC-Rome", None),  # MKL's code of its own choice on an AMD CPU
    "threads": ("native", None),  # 1 thread against the golden 2
    "ATEN_CPU_CAPABILITY": ("native", "AVX-512"),  # ATen's AVX-512 kernels against AVX2
    "ONEDNN_MAX_CPU_ISA": ("native", "AVX-512"),  # oneDNN's AVX-512 kernels against AVX2
}


@pytest.mark.slow
@pytest.mark.parametrize("pin", [p if DROPS[p][0] == "native" else pytest.param(p, marks=needs_qemu)
                                 for p in sorted(DROPS)])
def test_leaving_out_any_one_pin_breaks_the_agreement(pin):
    cpu, needs = DROPS[pin]
    if needs == "AVX-512" and not AVX512:
        pytest.skip(f"without {pin} this CPU (no AVX-512) picks AVX2 anyway: nothing to show here")
    dropped = numcheck.run(cpu, drop=pin)["md5"]
    assert dropped["cnn"] != GOLDEN["cnn"] or dropped["mlp"] != GOLDEN["mlp"]


def test_pin_sets_the_portable_environment_and_refuses_once_torch_is_loaded():
    code = ("import os, sys; from mnistflow.core.numerics import pin; pin(sys.argv[1], 4, 2); "
            "print(' '.join(os.environ.get(k, '-') for k in ('ATEN_CPU_CAPABILITY', 'MKL_CBWR', "
            "'ONEDNN_MAX_CPU_ISA', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ATEN_CPU_CAPABILITY": "avx512"}
    for mode, expected in (("portable", "avx2 COMPATIBLE AVX2 2 2"), ("fast", "- - - 2 2")):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, timeout=120)
        assert proc.stdout.split("\n")[0] == expected  # fast takes PyTorch's own choice, not a leftover pin
    # Once torch is loaded, any pin is refused (whatever the mode: one Python importing torch shows it).
    late = subprocess.run([sys.executable, "-c", code + "; import torch; pin('fast', 2)", "portable"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert "numerics.pin must run before torch is imported" in late.stderr


def test_threads_are_shared_by_the_processes_of_a_torchrun_world(monkeypatch):
    assert [numerics.threads_per_process(4, n) for n in (1, 2, 3, 8)] == [4, 2, 1, 1]
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: its world, on one machine or several
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items() if k != "torch"})
    monkeypatch.setattr(os, "environ", dict(os.environ))
    numerics.pin("portable", 2, processes=1)
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_queue_workers_that_share_the_cores_wait_passively_unless_the_user_said_otherwise(monkeypatch):
    from mnistflow.tools.compare import workers_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert workers_env(1) == {} and workers_env(2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert workers_env(4) == {}


@pytest.mark.parametrize("machine, flags, expected", [
    ("x86_64", "fpu sse2 avx avx2 fma avx512f", True),
    ("x86_64", "fpu sse2 avx avx2 fma", True),
    ("x86_64", "fpu sse2 avx", False),  # no AVX2: it runs, and says it will not match
    ("aarch64", "fp asimd", False),
])
def test_a_portable_cpu_is_x86_64_with_avx2_and_fma(monkeypatch, tmp_path, machine, flags, expected):
    monkeypatch.setattr(numerics.platform, "machine", lambda: machine)
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert numerics.portable_cpu(tmp_path / "cpuinfo") is expected


def test_every_stage_that_computes_pins_its_numerics_before_torch_loads():
    """A stage whose outputs depend on `numerics` calls `pin` first in main, and imports nothing at
    its top that loads torch (check_params validates every section, and writes only its stamp)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    pinned = {next(w for w in s.get("do", s)["cmd"].split() if w.startswith("stages/"))
              for name, s in stages.items() if "numerics" in s.get("do", s)["params"] and name != "check_params"}
    assert pinned == {"stages/preprocess.py", "stages/train.py", "stages/evaluate.py", "stages/visualize.py"}
    for script in sorted(pinned):
        tree = ast.parse((ROOT / script).read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        pins = [i for i, n in enumerate(main.body) if any(
            isinstance(c, ast.Call) and getattr(c.func, "id", None) == "pin" for c in ast.walk(n))]
        imports = [i for i, n in enumerate(main.body) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert pins and imports and pins[0] < imports[0], script
        top = "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
        probe = subprocess.run([sys.executable, "-c", f"{top}\nimport sys; print('torch' in sys.modules)"],
                               capture_output=True, text=True, cwd=ROOT, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert probe.stdout.strip() == "False", (script, probe.stderr)
