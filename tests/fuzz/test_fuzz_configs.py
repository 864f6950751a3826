"""Fuzz: damaged configs and checkpoints end in one `error:` line and status 2, never a traceback.

Cases are generated from a fixed seed, so a failure names a case that reproduces:

- configs (through `clap-lightning fit` in-process): every field of the pretraining schema
  and of its encoders given a value of the wrong type, every bounded number pushed out of
  its range, unknown keys in every section, malformed YAML (cut, tab-indented, unbalanced,
  undecodable bytes, a list at top level) and malformed `key=value` overrides. Shards point
  nowhere, so a config that happens to be valid stops at the shard check, in one line too.
- checkpoints (through the check `fit`/`validate`/`test`/`zeroshot` share, and the loader
  `validate`/`test`/`zeroshot` use): truncation, bit flips, random bytes, missing top-level
  keys, missing/extra/reshaped/non-tensor weights, foreign state dicts and stored configs
  (multi-task, captioning, msclap-like, wrong types), and a pickle payload that must not run.

Two cases also run as real subprocesses, to see what a user sees on stderr.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch
import yaml

from clap_lightning.checkpoint import PRETRAINING, check_resumable
from clap_lightning.cli import main
from clap_lightning.config import ExperimentConfig, Range, load_config, to_container
from clap_lightning.errors import ClapError
from clap_lightning.lit.pretraining import ClapPretraining
from clap_lightning.lit.run import load_pretraining
from tests.checkpoint_factory import pretraining_checkpoint
from tests.shard_factory import write_good_shards

SEED = 20261203
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "experiment" / "demo.yaml"
NOWHERE = "/nonexistent/clap-fuzz-shards"  # a valid config stops here: "shard directory not found"


def base_config() -> dict:
    """The demo experiment, resolved, with shards that do not exist (nothing can start training)."""
    config = to_container(load_config(ExperimentConfig, DEMO, [f"data.train={NOWHERE}", 'data.val=""',
                                                               'data.test=""', "run_dir=/nonexistent/clap-fuzz-run"]))
    return config


BASE = base_config()


# ----------------------------------------------------------------------------- config cases


@dataclasses.dataclass
class ConfigCase:
    name: str
    write: Callable[[Path], list[str]]  # writes the YAML (if any) into a folder, returns the fit arguments
    expect: Optional[str] = None  # text the one error line must contain (None: any one line)


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every scalar and list in a nested dict, encoder option maps included."""
    found = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _leaves(value, f"{dotted}.")
        else:
            found.append((dotted, value))
    return found


def _set(tree: dict, dotted: str, value: Any) -> dict:
    tree = yaml.safe_load(yaml.safe_dump(tree))  # a deep copy
    node = tree
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return tree


def _config_file(tree: Any) -> Callable[[Path], list[str]]:
    def write(folder: Path) -> list[str]:
        path = folder / "experiment.yaml"
        path.write_text(yaml.safe_dump(tree) if not isinstance(tree, (str, bytes)) else "")
        if isinstance(tree, bytes):
            path.write_bytes(tree)
        elif isinstance(tree, str):
            path.write_text(tree)
        return ["--config", str(path)]
    return write


def _wrong_value(value: Any, rng: random.Random) -> Any:
    """A value OmegaConf cannot convert to the type `value` has."""
    if isinstance(value, bool):
        return rng.choice(["maybe", "sometimes", [True]])
    if isinstance(value, (int, float)):
        return rng.choice(["many", "fast", {"n": 1}, [1, 2], "1.2.3"])
    if isinstance(value, str):
        return rng.choice([{"nested": "map"}, {"a": [1]}])
    if isinstance(value, list):
        return rng.choice(["not-a-list", {"k": 1}])
    return None


def wrong_type_cases(rng: random.Random) -> list[ConfigCase]:
    cases = []
    for key, value in _leaves(BASE):
        if value is None or key in ("data.train",):
            continue
        wrong = _wrong_value(value, rng)
        if wrong is None:
            continue
        expect = key.split(".")[-1]
        if key.endswith(".name") and key.startswith("model."):  # an encoder name: unknown name, not a type
            wrong = expect = "no_such_encoder"
        cases.append(ConfigCase(f"wrong_type-{key}", _config_file(_set(BASE, key, wrong)), expect=expect))
    return cases


def _bounded_fields(config: Any, prefix: str = "") -> list[tuple[str, Any, Range]]:
    found = []
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            found += _bounded_fields(value, f"{key}.")
        elif f.metadata.get("range") is not None and str(f.metadata["range"]):  # a range with a bound
            found.append((key, value, f.metadata["range"]))
    return found


def _outside(value: Any, allowed: Range, rng: random.Random) -> Any:
    is_int = isinstance(value, int) or (isinstance(value, list) and all(isinstance(v, int) for v in value))
    candidates = []
    low = allowed.ge if allowed.ge is not None else allowed.gt
    high = allowed.le if allowed.le is not None else allowed.lt
    if low is not None:
        candidates += [int(low) - rng.randint(1, 1000)] if is_int else [low - rng.uniform(0.01, 10), float("nan")]
        if allowed.gt is not None:
            candidates.append(int(low) if is_int else float(low))
    if high is not None:
        candidates += [int(high) + rng.randint(1, 9)] if is_int else [high + rng.uniform(0.01, 10), float("inf")]
        if allowed.lt is not None:
            candidates.append(high)
    candidates = [c for c in candidates if allowed.or_ is None or c != allowed.or_] or [int(low) - 1000]
    bad = rng.choice(candidates)
    return [value[0], bad] if isinstance(value, list) else bad


def out_of_range_cases(rng: random.Random) -> list[ConfigCase]:
    config = load_config(ExperimentConfig, DEMO)
    cases = []
    for key, value, allowed in _bounded_fields(config):
        bad = _outside(value if value is not None else 1.0, allowed, rng)
        cases.append(ConfigCase(f"out_of_range-{key}={bad}", _config_file(_set(BASE, key, bad)),
                                expect=f"{key}{'[1]' if isinstance(bad, list) else ''} must be"))
    return cases


def unknown_key_cases(rng: random.Random) -> list[ConfigCase]:
    sections = [""] + [f"{k}." for k, v in BASE.items() if isinstance(v, dict)]
    sections += ["model.audio_encoder.", "model.text_encoder."]
    cases = []
    for section in sections:
        for _ in range(2):
            key = section + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(3, 12)))
            cases.append(ConfigCase(f"unknown_key-{key}", _config_file(_set(BASE, key, rng.choice([1, "x", [2]]))),
                                    expect=key.split(".")[-1]))
    return cases


def malformed_yaml_cases(rng: random.Random) -> list[ConfigCase]:
    text = yaml.safe_dump(BASE)
    lines = text.splitlines(keepends=True)
    mutations: list[tuple[str, Any]] = [
        ("empty", ""), ("top_level_list", "- a\n- b\n"), ("top_level_scalar", "42\n"),
        ("binary", bytes(rng.randrange(256) for _ in range(300))), ("utf16", text.encode("utf-16")),
        ("unbalanced", text + "extra: [1, 2\n"), ("tab_indent", text.replace("  ", "\t", 3)),
        ("duplicate_anchor", text + "a: &x 1\nb: *y\n"), ("defaults_group", "defaults: {modle: tiny}\n"),
        ("defaults_missing_file", "defaults: {model: no_such_model}\n"),
    ]
    for i in range(12):
        cut = rng.randrange(1, len(text))
        mutations.append((f"truncated_at_{cut}", text[:cut]))
    for i in range(8):
        at = rng.randrange(len(lines))
        broken = lines[:at] + [lines[at].replace(":", "", 1)] + lines[at + 1:]
        mutations.append((f"no_colon_line_{at}", "".join(broken)))
    for i in range(8):
        at = rng.randrange(len(text))
        mutations.append((f"char_{at}", text[:at] + rng.choice("{}[]:&*!|>%@`'\"#\t") + text[at + 1:]))
    return [ConfigCase(f"yaml-{name}", _config_file(content)) for name, content in mutations]


def override_cases(rng: random.Random) -> list[ConfigCase]:
    overrides = ["trainer.max_steps", "=3", "data..train=x", "data.global_batch_size=1e9999", "trainer.devices=[1",
                 "optim.lr=''", "optim.betas=[a,b]", "model.d_proj={a: 1}", "data.num_workers=-3",
                 "trainer.accumulate_grad_batches=0", "zeroshot.prompt=no placeholder", "seed=1.5",
                 "data.train_sources=[{shards: x, weight: nan}]", "model.audio_encoder.depths=[1, x]",
                 "model.text_encoder.n_layer=-2", "trainer.precision={}", "name=${missing}", "run_dir=${oops",
                 "data.pad_mode=mirror", "objective.accumulation=sometimes", "model.audio_encoder.name=htsta"]
    for _ in range(9):
        key, value = rng.choice(_leaves(BASE))
        overrides.append(f"{key}={rng.choice(['', '[', '}', '-1', 'nan', '1e400', 'None', '~', '!!python/none'])}")
    return [ConfigCase(f"override-{item}", lambda folder, item=item: ["--config", str(DEMO), f"data.train={NOWHERE}",
                                                                      item]) for item in overrides]


def config_cases() -> list[ConfigCase]:
    rng = random.Random(SEED)
    return (wrong_type_cases(rng) + out_of_range_cases(rng) + unknown_key_cases(rng) + malformed_yaml_cases(rng)
            + override_cases(rng))


CONFIG_CASES = config_cases()


def assert_one_error_line(capsys, expect: Optional[str] = None) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), f"stderr was:\n{captured.err}"
    assert "Traceback" not in captured.err + captured.out
    if expect is not None:
        assert expect in err, err
    return err


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.name[:90] for c in CONFIG_CASES])
def test_damaged_config_is_one_error_line(case: ConfigCase, tmp_path, capsys):
    assert main(["fit", *case.write(tmp_path)]) == 2
    assert_one_error_line(capsys, case.expect)


# ----------------------------------------------------------------------------- checkpoint cases


@dataclasses.dataclass
class CheckpointCase:
    """Refused by the resume check (`fit`) and by the loader (`validate`/`test`/`zeroshot`): True, or None for either.

    Resuming reads the weights and training state into the *configured* model, so damage to the
    stored config alone does not concern it; the loader rebuilds the model from the stored config
    and needs no training state.
    """

    name: str
    make: Callable[[dict, bytes], Any]  # (base checkpoint, its bytes) -> bytes to write, or an object to torch.save
    resume_refuses: Optional[bool] = True
    load_refuses: Optional[bool] = True
    expect: Optional[str] = None


class _Payload:
    """A pickle that would record its execution: weights_only loading must refuse it unexecuted."""

    ran = False

    def __reduce__(self):
        return (_Payload._mark, ())

    @staticmethod
    def _mark():
        _Payload.ran = True


def _copy(checkpoint: dict) -> dict:
    return {**checkpoint, "state_dict": dict(checkpoint["state_dict"]),
            "hyper_parameters": {"config": yaml.safe_load(yaml.safe_dump(checkpoint["hyper_parameters"]["config"]))}}


def _without(key: str) -> Callable[[dict, bytes], dict]:
    return lambda ck, _: {k: v for k, v in _copy(ck).items() if k != key}


def _edit_state(edit: Callable[[dict, random.Random], None], rng: random.Random) -> Callable[[dict, bytes], dict]:
    def make(ck: dict, _: bytes) -> dict:
        ck = _copy(ck)
        edit(ck["state_dict"], rng)
        return ck
    return make


def _edit_config(key: str, value: Any) -> Callable[[dict, bytes], dict]:
    def make(ck: dict, _: bytes) -> dict:
        ck = _copy(ck)
        ck["hyper_parameters"]["config"] = _set(ck["hyper_parameters"]["config"], key, value)
        return ck
    return make


def _flip_bits(count: int, rng: random.Random) -> Callable[[dict, bytes], bytes]:
    positions = [rng.random() for _ in range(count)]
    bits = [rng.randrange(8) for _ in range(count)]

    def make(_: dict, data: bytes) -> bytes:
        data = bytearray(data)
        for where, bit in zip(positions, bits):
            data[int(where * len(data))] ^= 1 << bit
        return bytes(data)
    return make


def _first_keys(state: dict, rng: random.Random, n: int = 1) -> list[str]:
    return rng.sample(sorted(state), n)


def checkpoint_cases() -> list[CheckpointCase]:
    rng = random.Random(SEED + 1)
    cases = [CheckpointCase(f"truncated_to_{f:.3f}", lambda _, d, f=f: d[: int(len(d) * f)])
             for f in [0.0, 0.5, 0.999] + [rng.random() for _ in range(17)]]
    cases += [CheckpointCase(f"truncated_to_{n}_bytes", lambda _, d, n=n: d[:n]) for n in (1, 22, 100)]
    # A flip in the zip structure or the pickle is refused; one in a weight's bytes may load (different weights).
    cases += [
        CheckpointCase(f"bit_flips_{i}", _flip_bits(rng.randint(1, 8), rng), resume_refuses=None, load_refuses=None)
        for i in range(30)
    ]
    cases += [CheckpointCase(f"random_bytes_{n}", lambda _, d, n=n, s=rng.random(): random.Random(s).randbytes(n))
              for n in (10, 1000, 100_000)]
    cases += [
        CheckpointCase("text_file", lambda _, d: b"epoch: 3\nstate_dict: {}\n"),
        CheckpointCase("zip_not_torch", lambda _, d: _zip_with({"a.txt": b"hello"})),
        CheckpointCase("gzip_header", lambda _, d: b"\x1f\x8b\x08\x00" + d[:1000]),
        CheckpointCase("pickle_payload", lambda _, d: pickle.dumps({"state_dict": _Payload()}),
                       expect="torch.load(weights_only=True)"),
        CheckpointCase("top_level_list", lambda ck, _: [ck["state_dict"]], expect="not a clap-lightning checkpoint"),
        CheckpointCase("top_level_tensor", lambda ck, _: torch.zeros(3), expect="not a clap-lightning checkpoint"),
        CheckpointCase("msclap_like", lambda ck, _: {"model": ck["state_dict"]}, expect="convert it with"),
        CheckpointCase("bare_state_dict", lambda ck, _: ck["state_dict"], expect="not a clap-lightning checkpoint"),
        CheckpointCase("state_dict_list", lambda ck, _: {**_copy(ck), "state_dict": [1, 2]},
                       expect="not a clap-lightning checkpoint"),
        CheckpointCase("hyper_parameters_none", lambda ck, _: {**_copy(ck), "hyper_parameters": None},
                       expect="not a clap-lightning checkpoint"),
        CheckpointCase("hyper_parameters_list", lambda ck, _: {**_copy(ck), "hyper_parameters": [1]},
                       expect="not a clap-lightning checkpoint"),
        CheckpointCase("config_string", lambda ck, _: {**_copy(ck), "hyper_parameters": {"config": "demo"}},
                       expect="not a clap-lightning checkpoint"),
        CheckpointCase("foreign_linear", lambda ck, _: {**_copy(ck), "state_dict": torch.nn.Linear(3, 2).state_dict()},
                       expect="does not match"),
        CheckpointCase("multitask_config", _edit_config("tasks", [{"name": "a", "shards": "x"}]),
                       expect="not a pretraining checkpoint: it holds a multi-task run"),
        CheckpointCase("captioning_config", _edit_config("captioner", {"n_layer": 2}),
                       expect="not a pretraining checkpoint: it holds a captioning run"),
    ]
    for key in ("state_dict", "epoch", "global_step", "loops", "optimizer_states", "lr_schedulers", "hyper_parameters"):
        needed_to_load = key in ("state_dict", "hyper_parameters")
        cases.append(CheckpointCase(f"without_{key}", _without(key), load_refuses=True if needed_to_load else None))
    edits = {
        "drop_weight": lambda s, r: [s.pop(k) for k in _first_keys(s, r)],
        "extra_weight": lambda s, r: s.__setitem__("model.extra.weight", torch.zeros(2)),
        "reshaped_weight": lambda s, r: [s.__setitem__(k, torch.zeros(3, 1, 2)) for k in _first_keys(s, r)],
        "string_weight": lambda s, r: [s.__setitem__(k, "weights") for k in _first_keys(s, r)],
        "none_weight": lambda s, r: [s.__setitem__(k, None) for k in _first_keys(s, r)],
        "renamed_weights": lambda s, r: [s.__setitem__("x" + k, s.pop(k)) for k in _first_keys(s, r, 3)],
        "empty_state": lambda s, r: s.clear(),
    }
    for name, edit in edits.items():
        for i in range(2):
            cases.append(CheckpointCase(f"{name}_{i}", _edit_state(edit, random.Random(rng.random())),
                                        expect="does not match"))
    for key, value in rng.sample([kv for kv in _leaves(BASE) if kv[1] is not None], 20):
        wrong = _wrong_value(value, rng)
        if wrong is not None:  # the stored config is read by validate/test/zeroshot to rebuild the model
            cases.append(
                CheckpointCase(f"stored_config_wrong_type-{key}", _edit_config(key, wrong), resume_refuses=None)
            )
    cases += [CheckpointCase("stored_config_unknown_key", _edit_config("model.zzz", 1), resume_refuses=None),
              CheckpointCase("stored_config_out_of_range", _edit_config("model.d_proj", -4), resume_refuses=None),
              CheckpointCase("stored_config_other_model", _edit_config("model.d_proj", 64), resume_refuses=None,
                             expect="does not match"),
              CheckpointCase("stored_config_unknown_encoder", _edit_config("model.audio_encoder.name", "htsta"),
                             resume_refuses=None)]
    return cases


def _zip_with(members: dict[str, bytes]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


CHECKPOINT_CASES = checkpoint_cases()


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> tuple[dict, bytes, ClapPretraining]:
    """A hand-built demo checkpoint, its bytes, and a module of the configured model to check it against."""
    checkpoint = pretraining_checkpoint()
    path = tmp_path_factory.mktemp("checkpoint") / "good.ckpt"
    torch.save(checkpoint, path)
    return checkpoint, path.read_bytes(), ClapPretraining(load_config(ExperimentConfig, DEMO))


def _outcome(call: Callable[[], Any]) -> Optional[str]:
    """None when `call` succeeds, else the ClapError's message (anything else propagates: a test failure)."""
    try:
        call()
    except ClapError as err:
        return str(err)
    return None


def _write_case(case: CheckpointCase, base: tuple, path: Path) -> Path:
    checkpoint, data, _ = base
    damaged = case.make(checkpoint, data)
    if isinstance(damaged, (bytes, bytearray)):
        path.write_bytes(damaged)
    else:
        torch.save(damaged, path)
    return path


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=[c.name for c in CHECKPOINT_CASES])
def test_damaged_checkpoint_is_refused_in_one_line(case: CheckpointCase, base_checkpoint, tmp_path):
    path = _write_case(case, base_checkpoint, tmp_path / "damaged.ckpt")
    module = base_checkpoint[2]
    for check, must_refuse in ((lambda: check_resumable(path, module, PRETRAINING), case.resume_refuses),
                               (lambda: load_pretraining(path), case.load_refuses)):
        message = _outcome(check)
        if message is None:
            assert not must_refuse, f"{case.name}: accepted"
            continue
        assert "\n" not in message and message.strip() == message, message
        if case.expect:
            assert case.expect in message, message
    assert not _Payload.ran


def test_the_fuzz_suite_has_enough_cases():
    assert len(CONFIG_CASES) + len(CHECKPOINT_CASES) >= 250


def test_as_a_user_sees_it_in_subprocesses(base_checkpoint, tmp_path):
    """A malformed YAML and a truncated checkpoint: stderr holds exactly one `error:` line, status 2."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(BASE)[:-40] + "\n  bad: [\n")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(base_checkpoint[1][: len(base_checkpoint[1]) // 3])
    write_good_shards(tmp_path / "shards", "t", 1, 2)
    commands = [["fit", "--config", str(broken)],
                ["validate", "--config", str(DEMO), f"data.val={tmp_path / 'shards'}", "--ckpt_path", str(truncated)]]
    runs = [subprocess.Popen([sys.executable, "-m", "clap_lightning.cli", *c], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for c in commands]
    for run, expected in zip(runs, ["cannot parse", "with torch.load(weights_only=True)"]):
        out, err = run.communicate(timeout=120)
        assert run.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err + out, err
