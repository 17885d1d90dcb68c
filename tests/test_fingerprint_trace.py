"""The fingerprint trace (ersm/portability/trace.py, issue 34): the traced run is the fingerprint run, a trace
recorded twice here compares equal, a departure is found at exactly its record, a trace of
another torch or config is refused before anything is compared, and the committed Intel trace
is what it says. The runs here take 2 training steps instead of 30 (the config, which the trace
header records and the comparison checks, says so)."""
import functools
import json

import pytest
import torch

from ersm.portability import fingerprint, trace
from ersm.cli import main

SHORT = fingerprint.FingerprintConfig(steps=2)
INTEL = "intel-xeon-998ab8edcfdfde23"


@pytest.fixture(scope="module")
def recorded():
    return trace.record(SHORT)


def written(recorded, path, edit=None):
    """``recorded`` written to ``path``, its JSON changed by ``edit(data)`` first if given."""
    trace.write(recorded, path)
    if edit is not None:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return path


def no_run(*args, **kwargs):
    raise AssertionError("the fingerprint ran, but a trace that cannot be compared must be refused first")


def test_the_traced_run_ends_with_the_plain_fingerprint_and_records_every_kind(recorded):
    assert recorded.fingerprint == fingerprint.run(SHORT)
    assert recorded.header["config"] == SHORT.as_dict() and recorded.header["torch"] == torch.__version__
    assert recorded.header["records"] == len(recorded.records)
    assert [row[0] for row in recorded.records] == list(range(len(recorded.records)))
    steps = {(row[1], row[2]) for row in recorded.records}
    assert steps == {(0, "images"), (0, "weights")} | {(s, k) for s in (1, 2) for k in trace.KINDS}
    assert all(row[5] in trace.LIBRARIES for row in recorded.records), "every library is in the documented table"


def test_a_trace_recorded_twice_here_compares_equal(recorded, tmp_path):
    theirs = trace.load(written(recorded, tmp_path / "first.json"))
    text, status = trace.compare(theirs, SHORT)  # records a second trace here
    assert status == 0, text
    assert f"all {len(recorded.records)} records match" in text


def test_a_record_changed_in_the_middle_is_the_first_departure_named_with_its_module_and_op(recorded, tmp_path):
    index = next(row[0] for row in recorded.records if row[1:4] == [2, "forward", "layer2.0.1.1"])
    assert 0 < index < len(recorded.records) - 1

    def perturb(data):
        data["records"][index][6] = "0" * 16

    theirs = trace.load(written(recorded, tmp_path / "perturbed.json", perturb))
    text, status = trace.compare(theirs, SHORT, ours=recorded)
    assert status == 1
    assert (f"FIRST DEPARTURE at record {index} of {len(recorded.records)}: step 2, forward, layer2.0.1.1, op BatchNorm2d, "
            f"library aten-vec") in text
    assert f"theirs {'0' * 16}, ours {recorded.records[index][6]}" in text
    before = [line.strip() for line in text.splitlines() if line.startswith("  record ")]
    assert before == [trace.describe_row(row) for row in recorded.records[index - trace.CONTEXT:index]]
    assert "forward 1 of" in text and "grad 0 of" in text


@pytest.mark.parametrize("field, edit, theirs, ours", [
    ("torch", lambda h: h.update(torch="2.13.0+cpu"), "'2.13.0+cpu'", repr(torch.__version__)),
    ("config.steps", lambda h: h["config"].update(steps=30), "30", "2"),
    ("config.model.width", lambda h: h["config"]["model"].update(width=16), "16", "8"),
])
def test_a_trace_of_another_torch_or_config_is_refused_naming_the_field_before_anything_runs(
        recorded, tmp_path, monkeypatch, field, edit, theirs, ours):
    theirs_trace = trace.load(written(recorded, tmp_path / "other.json", lambda data: edit(data["header"])))
    monkeypatch.setattr(fingerprint, "run", no_run)
    monkeypatch.setattr(trace, "first_departure", no_run)
    with pytest.raises(trace.TraceRefused) as refused:
        trace.compare(theirs_trace, SHORT)
    assert f"{field}: theirs {theirs}, ours {ours}" in str(refused.value)
    assert "not comparable step by step" in str(refused.value)


def test_the_command_line_traces_compares_and_refuses_with_its_exit_statuses(recorded, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fingerprint, "FingerprintConfig", functools.partial(fingerprint.FingerprintConfig, steps=2))
    path = tmp_path / "here.json"
    main(["fingerprint", "--trace", str(path)])
    assert f"trace: {path} ({len(recorded.records)} records" in capsys.readouterr().out
    assert main(["fingerprint", "--compare", str(path)]) == 0
    data = json.loads(path.read_text())
    data["records"][-1][6] = "f" * 16  # the last weights
    path.write_text(json.dumps(data))
    assert main(["fingerprint", "--compare", str(path)]) == 1
    assert f"FIRST DEPARTURE at record {len(data['records']) - 1}" in capsys.readouterr().out
    data["header"]["torch"] = "1.0.0"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(fingerprint, "run", no_run)
    assert main(["fingerprint", "--compare", str(path)]) == 2
    assert f"torch: theirs '1.0.0', ours {torch.__version__!r}" in capsys.readouterr().err
    assert main(["fingerprint", "--compare", "no-such-trace"]) == 2
    assert "--compare 'no-such-trace': no such file" in capsys.readouterr().err


def test_the_committed_intel_trace_loads_and_is_the_intel_fingerprint_of_the_default_config():
    intel = trace.load(INTEL)
    assert intel.fingerprint == "998ab8edcfdfde23" and "Intel" in intel.header["cpu_model"]
    torch_version = intel.header["torch"]
    assert intel.fingerprint == fingerprint.REFERENCE[torch_version] or intel.fingerprint in fingerprint.OTHER_CPUS[torch_version]
    assert intel.header["config"] == fingerprint.FingerprintConfig().as_dict()
    assert intel.header["records"] == len(intel.records) and intel.header["format"] == trace.FORMAT
    assert intel.header["kernel_facts"]["portable_in_force"]
    assert INTEL in fingerprint.KNOWN_TRACES and trace.resolve(INTEL).stat().st_size < 300_000
