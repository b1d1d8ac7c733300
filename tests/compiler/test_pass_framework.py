from dataclasses import dataclass

import pytest

from accelc.compiler.bundle import ModelBundle
from accelc.compiler.errors import AccelcError, InputError, PassBugError, PassError, PreconditionError
from accelc.compiler.manager import PassManager
from accelc.compiler.pass_base import Pass, PassConfig, PassResult


@dataclass(frozen=True)
class AppendConfig(PassConfig):
    value: str = "x"

    def __post_init__(self):
        if not self.value:
            raise InputError("value must not be empty")


class AppendPass(Pass):
    name = "append"
    config_class = AppendConfig

    def call(self, bundle):
        bundle.records.setdefault("trace", []).append(self.config.value)
        return PassResult(changed=True, metrics={"n": len(bundle.records["trace"])})


class NeedsAPass(Pass):
    name = "needs-a"

    def requires(self, bundle):
        if "a" not in bundle.records.get("trace", []):
            raise PreconditionError("needs 'a' in the trace")

    def call(self, bundle):
        return PassResult(changed=False)


class BoomPass(Pass):
    name = "boom"

    def call(self, bundle):
        raise ValueError("kaboom")


class BrokenEnsurePass(Pass):
    name = "broken-ensure"

    def call(self, bundle):
        return PassResult(changed=True)

    def ensures(self, bundle, result):
        raise PreconditionError("left the model inconsistent")


def bundle():
    return ModelBundle(model=None, tokenizer=None, adapter=None)


def test_passes_run_in_order_and_are_recorded():
    b = bundle()
    log = PassManager([AppendPass(AppendConfig("a")), AppendPass(AppendConfig("b")), NeedsAPass()]).run(b)
    assert b.records["trace"] == ["a", "b"]
    assert [r.name for r in log] == ["append", "append", "needs-a"]
    assert log[0].config == {"value": "a"} and log[1].metrics == {"n": 2}
    assert log[0].changed and not log[2].changed
    assert all(r.seconds >= 0 for r in log)
    assert log[0].to_json()["name"] == "append"


def test_precondition_failure_names_pass_and_history():
    b = bundle()
    with pytest.raises(PassError) as e:
        PassManager([AppendPass(AppendConfig("z")), NeedsAPass()]).run(b)
    msg = str(e.value)
    assert "needs-a" in msg and "precondition" in msg and "needs 'a'" in msg
    assert e.value.before == ["append"]


def test_exception_inside_pass_is_a_bug_not_a_user_error():
    with pytest.raises(PassBugError) as e:
        PassManager([AppendPass(), BoomPass(), AppendPass()]).run(bundle())
    assert "'boom' failed" in str(e.value) and "ValueError: kaboom" in str(e.value)
    assert e.value.before == ["append"]
    assert not isinstance(e.value, AccelcError) and e.value.exit_code == 1
    cause = e.value
    while cause.__cause__ is not None:       # the original exception stays chained for the traceback
        cause = cause.__cause__
    assert isinstance(cause, ValueError)


def test_user_error_inside_pass_stays_a_pass_error():
    class RefusePass(Pass):
        name = "refuse"

        def call(self, bundle):
            raise InputError("bad value")
    with pytest.raises(PassError, match="'refuse' failed: bad value") as e:
        PassManager([RefusePass()]).run(bundle())
    assert e.value.exit_code == 2


def test_pass_log_records_peak_memory():
    class AllocPass(Pass):
        name = "alloc"

        def call(self, bundle):
            buf = bytearray(64 << 20)
            buf[::4096] = b"1" * len(buf[::4096])      # touch every page: 64 MiB resident
            return PassResult(False)
    b = bundle()
    log = PassManager([AppendPass(), AllocPass()]).run(b)
    mem = [r.to_json()["memory"] for r in log]
    assert all(m["peak_rss_mb"] > 0 and m["peak_scope"] in ("step", "process") for m in mem)
    assert mem[1]["peak_rss_mb"] >= mem[1]["rss_before_mb"] + 60
    if mem[0]["peak_scope"] == "step":                  # per-pass peaks: the small pass's peak stays small
        assert mem[0]["peak_rss_mb"] < mem[1]["peak_rss_mb"] - 60
    assert b.records["peak_rss_mb"] >= mem[1]["peak_rss_mb"]


def test_postcondition_failure():
    with pytest.raises(PassError, match="postcondition"):
        PassManager([BrokenEnsurePass()]).run(bundle())


def test_config_validation_and_type():
    with pytest.raises(InputError):
        AppendConfig("")
    with pytest.raises(TypeError):
        AppendPass(PassConfig())
    with pytest.raises(Exception):
        AppendConfig("a").value = "b"  # frozen


def test_instrument_sees_every_pass():
    events = []
    PassManager([AppendPass(), AppendPass()], on_event=lambda k, i, n, p, r: events.append((k, i, n))).run(bundle())
    assert events == [("start", 0, 2), ("end", 0, 2), ("start", 1, 2), ("end", 1, 2)]


def test_target_registry():
    from accelc.targets import TARGETS, CompileOptions, get_target
    assert set(TARGETS) == {"cpu", "npu", "cuda"}
    assert get_target("npu").static_shapes and not get_target("cpu").static_shapes
    with pytest.raises(InputError, match="unknown target 'gpu'"):
        get_target("gpu")
    with pytest.raises(InputError, match="weight precision"):
        CompileOptions(weights="int3")
    with pytest.raises(InputError):
        CompileOptions(cache_len=4)


def test_unknown_method_spec_is_refused():
    from accelc.targets import CompileOptions, phases
    with pytest.raises(InputError, match="unknown pruning method 'nope'"):
        phases.compression(CompileOptions(prune="nope:0.5"))
    with pytest.raises(InputError, match="unknown quantization method"):
        phases.compression(CompileOptions(quantize="nope:1"))
