"""Portable CPU numerics (ersm/portability/numerics.py): pins in force, loud when they cannot be, and the
fingerprint of this commit's kernels equal to the reference the committed outputs were made with."""
import os
import subprocess
import sys

import pytest
import torch

from ersm.portability import fingerprint, numerics

portable_here = pytest.mark.skipif(numerics.portability_problem() is not None,
                                   reason=f"{numerics.portability_problem()}")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in numerics.PINS and k not in ("ERSM_KERNELS", "ERSM_THREADS")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


@portable_here
def test_every_pin_is_in_force_in_this_process():
    facts = numerics.describe()
    assert facts["portable_in_force"], facts
    assert facts["aten_capability"] == "AVX2" and facts["mkl_branch"] == "COMPATIBLE"
    assert facts["openblas"] == ["Haswell"] and not facts["numpy_avx512"]
    assert not facts["onednn_enabled"] and not facts["nnpack_enabled"]
    assert all(os.environ[name] == value for name, value in numerics.PINS.items())


@portable_here
def test_fingerprint_is_the_reference_or_a_cpu_measured_before():
    """A CPU whose portable kernels compute something new fails here: record it in OTHER_CPUS (nbval is then
    skipped there, saying so) or make it compute the reference."""
    expected = fingerprint.REFERENCE.get(torch.__version__)
    if expected is None:
        pytest.skip(f"no reference fingerprint for torch {torch.__version__}")
    got = fingerprint.weights_hash()
    known = fingerprint.OTHER_CPUS.get(torch.__version__, {})
    assert got == expected or got in known, (f"this CPU computes differently ({numerics.describe()}): fingerprint {got}, "
                                             f"reference {expected}, others measured {sorted(known)}")
    assert (fingerprint.reference_problem(got) is None) == (got == expected)


def test_a_fingerprint_other_than_the_reference_skips_nbval_in_one_line_naming_both():
    expected = fingerprint.REFERENCE[torch.__version__]
    other, cpu = next(iter(fingerprint.OTHER_CPUS[torch.__version__].items()))
    line = fingerprint.reference_problem(other)
    assert line.startswith("nbval skipped") and other in line and expected in line and cpu in line and "make unit" in line
    assert "not measured before" in fingerprint.reference_problem("0" * 16)
    assert fingerprint.reference_problem(expected) is None


@portable_here
def test_native_kernels_give_other_weights_so_the_fingerprint_can_tell():
    # the same recipe with the CPU's own kernels: if this equalled the portable hash the test above would prove nothing
    result = run_python("from ersm.portability import fingerprint; print(fingerprint.weights_hash())", ERSM_KERNELS="native")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() != fingerprint.weights_hash()


def test_an_unknown_kernel_mode_is_refused_at_import():
    result = run_python("import ersm", ERSM_KERNELS="fast")
    assert result.returncode != 0
    assert "ERSM_KERNELS='fast' must be one of ('portable', 'native')" in result.stderr


def test_a_bad_thread_count_is_refused_at_import():
    result = run_python("import ersm", ERSM_THREADS="two")
    assert result.returncode != 0
    assert "ERSM_THREADS='two' must be an integer >= 1" in result.stderr


@portable_here
def test_a_conflicting_pin_is_refused_with_its_name_and_value():
    result = run_python("import ersm", ATEN_CPU_CAPABILITY="avx512")
    assert result.returncode != 0
    assert "ATEN_CPU_CAPABILITY='avx512' conflicts with portable kernels" in result.stderr


@portable_here
def test_torch_used_before_ersm_gives_a_loud_warning_not_a_silent_unpinned_run():
    result = run_python("import torch; (torch.rand(4, 4) @ torch.rand(4, 4)).sum(); import ersm; "
                        "from ersm.portability import numerics; print(numerics.in_force())")
    assert result.returncode == 0, result.stderr
    assert "PortabilityWarning" in result.stderr and "NOT in force" in result.stderr
    assert "Import ersm first" in result.stderr
    assert result.stdout.strip() == "False"


@portable_here
def test_check_portable_follows_the_fingerprint_and_explains_itself_in_one_line_in_native_mode():
    here = run_python("import sys; from ersm.cli import main; sys.exit(main(['check-portable']))")
    got = fingerprint.weights_hash()
    same = got == fingerprint.REFERENCE.get(torch.__version__, got)
    assert here.returncode == (0 if same else 3), here.stdout + here.stderr
    assert here.stdout == ("" if same else fingerprint.reference_problem(got) + "\n")
    result = run_python("import sys; from ersm.cli import main; sys.exit(main(['check-portable']))", ERSM_KERNELS="native")
    assert result.returncode == 3
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbval skipped") and "make unit" in lines[0]


def test_a_cpu_that_is_not_x86_is_reported_with_what_to_run_instead(monkeypatch):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "aarch64")
    problem = numerics.portability_problem()
    assert problem.startswith("nbval skipped") and "aarch64, not x86-64" in problem and "make reproduce" in problem


def test_a_cpu_without_avx2_is_reported(monkeypatch):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset({"sse2", "avx"}))
    assert "no AVX2" in numerics.portability_problem()


def test_provenance_names_the_cpu_the_kernels_and_the_library_versions():
    facts = numerics.describe()
    for key in ("cpu_model", "aten_capability", "mkl_branch", "openblas", "pins", "torch", "mkl", "onednn", "threads"):
        assert key in facts
    assert facts["torch"] == torch.__version__ and facts["mkl"] and facts["onednn"]
