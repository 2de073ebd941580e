"""Transformer loss terms (cosine, hidden_mse, attention_mse, minilm), token-level kd/ce, and the Distiller
reading hidden states and attentions of real (tiny) Hugging Face models."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinykd import Distiller, create_model
from tinykd.errors import TinykdError
from tinykd.losses import Outputs, build_loss_term, kd_loss
from tinykd.models.outputs import eager_attention, forward_outputs

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")

NEW_TERMS = ["cosine", "hidden_mse", "attention_mse", "minilm"]


# --- fixtures: tiny BERTs saved and loaded back, and a padded batch --------------------------------------------------


def _save_bert(folder: Path, layers: int, hidden: int, heads: int = 2, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=2 * hidden,
                                     max_position_embeddings=32, num_labels=3)  # fmt: skip
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def berts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, nn.Module]:
    """Each model saved and loaded back once (sdpa attention, transformers' default); tests take copies."""
    root = tmp_path_factory.mktemp("berts")
    folders = {
        "teacher": _save_bert(root / "teacher", layers=4, hidden=48, seed=0),
        "student": _save_bert(root / "student", layers=2, hidden=32, seed=1),
        "student3": _save_bert(root / "student3", layers=2, hidden=48, heads=3, seed=2),
    }
    auto = transformers.AutoModelForSequenceClassification
    return {k: auto.from_pretrained(f, attn_implementation="sdpa") for k, f in folders.items()}


def load(berts: dict[str, nn.Module], name: str, attn: str = "sdpa") -> nn.Module:
    model = copy.deepcopy(berts[name])
    if attn != "sdpa":
        model.set_attn_implementation(attn)
    return model


@pytest.fixture()
def batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}, torch.tensor([0, 2, 1])


def one_term(name: str, params: dict | None = None) -> dict:
    return {name: (build_loss_term(name, params or {}), 1.0)}


# --- the maths, on tensors written out ------------------------------------------------------------------------------


def test_cosine_by_hand() -> None:
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    t = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    term = build_loss_term("cosine", {})
    so, to = Outputs(torch.zeros(1, 2), hidden_states=(s,)), Outputs(torch.zeros(1, 2), hidden_states=(t,))
    term.build(so, to)
    assert term.projection is None  # equal widths: DistilBERT's case, nothing learned
    expected = ((1 - 0) + (1 - 1 / math.sqrt(2))) / 2
    assert term(so, to, torch.zeros(1)).item() == pytest.approx(expected, rel=1e-6)


def test_hidden_mse_by_hand_follows_the_uniform_map() -> None:
    # student: embeddings + 1 layer; teacher: embeddings + 2 layers -> default map {0: 0, 1: 2}
    s = (torch.zeros(1, 2, 2), torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    t = (torch.ones(1, 2, 2), torch.full((1, 2, 2), 99.0), torch.tensor([[[1.0, 2.0], [3.0, 6.0]]]))
    term = build_loss_term("hidden_mse", {})
    so, to = Outputs(torch.zeros(1, 2), hidden_states=s), Outputs(torch.zeros(1, 2), hidden_states=t)
    term.build(so, to)
    assert term.pairs == {0: 0, 1: 2}
    # embeddings: mean((0 - 1)^2) = 1; layer 1 vs 2: mean(0, 0, 0, 4) = 1; TinyBERT sums over layers
    assert term(so, to, torch.zeros(1)).item() == pytest.approx(2.0)
    explicit = build_loss_term("hidden_mse", {"layers": {"1": 1}})  # keys as YAML may give them
    explicit.build(so, to)
    assert explicit(so, to, torch.zeros(1)).item() == pytest.approx(sum((x - 99) ** 2 for x in (1, 2, 3, 4)) / 4)


def test_attention_mse_by_hand() -> None:
    s = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # (B=1, H=1, T=2, T=2)
    t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    term = build_loss_term("attention_mse", {})
    so, to = Outputs(torch.zeros(1, 2), attentions=(s,)), Outputs(torch.zeros(1, 2), attentions=(t,))
    term.build(so, to)
    assert term.pairs == {1: 1}
    assert term(so, to, torch.zeros(1)).item() == pytest.approx((0.25 + 0.25) / 4)


def test_minilm_by_hand() -> None:
    a_s = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]]]])
    a_t = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])
    v_s, v_t = torch.tensor([[[1.0], [0.0]]]), torch.zeros(1, 2, 1)  # one head of width 1: relation = v v^T
    term = build_loss_term("minilm", {"student_values": "v", "teacher_values": "v"})
    so = Outputs(torch.zeros(1, 2), {"v": v_s}, attentions=(a_s,))
    to = Outputs(torch.zeros(1, 2), {"v": v_t}, attentions=(a_t,))
    term.build(so, to)
    e = math.e
    attention = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2  # row 1 is equal: KL 0
    relation = (0.5 * math.log(0.5 / (e / (e + 1))) + 0.5 * math.log(0.5 / (1 / (e + 1)))) / 2  # row 2: [.5, .5]
    assert term(so, to, torch.zeros(1)).item() == pytest.approx(attention + relation, rel=1e-5)


# --- properties every new term has, on random tensors ---------------------------------------------------------------


def _random_outputs(width: int, heads: int = 2, layers: int = 2, seed: int = 0, batch: int = 2, length: int = 5,
                    grad: bool = False) -> Outputs:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(batch, length, width, generator=g) for _ in range(layers + 1))
    attentions = tuple(torch.randn(batch, heads, length, length, generator=g).softmax(-1) for _ in range(layers))
    values = torch.randn(batch, length, width, generator=g)
    if grad:
        for t in (*hidden, *attentions, values):
            t.requires_grad_(True)
    return Outputs(torch.zeros(batch, 3), {"v": values}, hidden, attentions)


def _term(name: str) -> nn.Module:
    return build_loss_term(name, {"student_values": "v", "teacher_values": "v"} if name == "minilm" else {})


@pytest.mark.parametrize("name", NEW_TERMS)
def test_zero_for_identical_outputs_and_positive_otherwise(name: str) -> None:
    a, b = _random_outputs(16, seed=0), _random_outputs(16, seed=1)
    term = _term(name)
    term.build(a, a)
    same, different = term(a, a, torch.zeros(2)), term(a, b, torch.zeros(2))
    assert torch.isfinite(same) and torch.isfinite(different)
    assert same.item() == pytest.approx(0.0, abs=1e-5)
    assert different.item() > 1e-3


def _pad(outputs: Outputs, extra: int, seed: int) -> Outputs:
    """The same outputs with `extra` more positions of garbage (masked): padding must change nothing."""
    g = torch.Generator().manual_seed(seed)

    def grow(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        for d in dims:
            shape = list(t.shape)
            shape[d] = extra
            t = torch.cat([t, 100 * torch.randn(shape, generator=g).abs()], dim=d)
        return t

    b, length = outputs.hidden_states[0].shape[:2]
    mask = torch.cat([torch.ones(b, length), torch.zeros(b, extra)], dim=1).long()
    return Outputs(outputs.logits, {"v": grow(outputs.features["v"], (1,))},
                   tuple(grow(h, (1,)) for h in outputs.hidden_states),
                   tuple(grow(a, (2, 3)) for a in outputs.attentions), mask)  # fmt: skip


@pytest.mark.parametrize("name", NEW_TERMS)
def test_padding_changes_nothing(name: str) -> None:
    s, t = _random_outputs(16, seed=0), _random_outputs(16, seed=1)
    term = _term(name)
    term.build(s, t)
    reference = term(s, t, torch.zeros(2))
    padded = term(_pad(s, 3, seed=2), _pad(t, 3, seed=3), torch.zeros(2))
    assert padded.item() == pytest.approx(reference.item(), rel=1e-5)
    # and a padded position does count once it is unmasked
    unmasked = _pad(s, 3, seed=2)
    unmasked.mask = torch.ones_like(unmasked.mask)
    assert term(unmasked, _pad(t, 3, seed=3), torch.zeros(2)).item() != pytest.approx(reference.item(), rel=1e-3)


@pytest.mark.parametrize("name", NEW_TERMS)
def test_gradients_reach_the_student_and_the_projection_never_the_teacher(name: str) -> None:
    s, t = _random_outputs(16, seed=0, grad=True), _random_outputs(24, seed=1, grad=True)
    term = _term(name)
    term.build(s, t)
    term(s, t, torch.zeros(2)).backward()
    student_leaves = [*s.hidden_states, *s.attentions, s.features["v"]]
    assert any(x.grad is not None and x.grad.abs().sum() > 0 for x in student_leaves)
    assert all(x.grad is None for x in [*t.hidden_states, *t.attentions, t.features["v"]])
    if name in ("cosine", "hidden_mse"):  # widths 16 -> 24: a learned projection, trained with the student
        assert isinstance(term.projection, nn.Linear) and term.projection.weight.grad.abs().sum() > 0
    else:
        assert list(term.parameters()) == []  # attention relations are T x T: no projection


@pytest.mark.parametrize("name", NEW_TERMS)
def test_float32_under_bf16_autocast(name: str) -> None:
    s, t = _random_outputs(16, seed=0), _random_outputs(24, seed=1)
    term = _term(name)
    term.build(s, t)
    reference = term(s, t, torch.zeros(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = term(s, t, torch.zeros(2))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=0.02)  # only a projection runs in bf16


# --- the Distiller on real tiny BERTs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_TERMS)
def test_distiller_runs_each_term_on_bert_of_other_width_and_depth(name: str, berts, batch, capsys) -> None:
    teacher, student = load(berts, "teacher"), load(berts, "student")
    inputs, y = batch
    terms = {**one_term("ce"), **one_term(name)}
    distiller = Distiller(teacher, student, terms, example_inputs=inputs)
    printed = capsys.readouterr().out
    needs_attention = name in ("attention_mse", "minilm")
    for role, model in (("teacher", teacher), ("student", student)):
        assert (f"tinykd: {role}: attention probabilities ({name}) need transformers' eager attention; "
                "switched from sdpa" in printed) == needs_attention  # fmt: skip
        assert model.config._attn_implementation == ("eager" if needs_attention else "sdpa")
    logits, losses = distiller.train()(inputs, y)
    assert logits.shape == (3, 3) and torch.isfinite(losses[name]) and losses[name] > 0
    sum(losses.values()).backward()
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert {id(p) for p in distiller.terms[name].parameters()} <= trainable
    assert all(p.grad is not None for p in distiller.terms[name].parameters())
    if name == "hidden_mse":
        assert distiller.terms[name].pairs == {0: 0, 1: 2, 2: 4}  # TinyBERT's g(i) = i * 4 / 2
    if name == "minilm":  # found by itself: the last layer's value projections
        assert distiller.terms[name].student_values == "bert.encoder.layer.1.attention.self.value"
        assert distiller.terms[name].teacher_values == "bert.encoder.layer.3.attention.self.value"


@pytest.mark.parametrize("name", NEW_TERMS)
def test_a_copy_of_the_student_as_teacher_gives_zero(name: str, berts, batch) -> None:
    student = load(berts, "student")
    teacher = copy.deepcopy(student)
    inputs, y = batch
    distiller = Distiller(teacher, student, one_term(name), example_inputs=inputs).eval()
    _, losses = distiller(inputs, y)
    assert losses[name].item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", NEW_TERMS)
def test_the_distiller_passes_the_padding_mask_on(name: str, berts, batch) -> None:
    """Appending padded positions of other tokens to a batch leaves each term's value as it was."""
    inputs, y = batch
    distiller = Distiller(load(berts, "teacher"), load(berts, "student"), one_term(name), example_inputs=inputs).eval()
    extra = {"input_ids": torch.randint(1, 100, (3, 4)), "attention_mask": torch.zeros(3, 4, dtype=torch.long)}
    padded = {k: torch.cat([inputs[k], extra[k]], dim=1) for k in extra}
    with torch.no_grad():
        assert distiller(padded, y)[1][name].item() == pytest.approx(distiller(inputs, y)[1][name].item(), rel=1e-4)


def test_eager_models_are_not_switched_and_nothing_is_said(berts, batch, capsys) -> None:
    teacher, student = load(berts, "teacher", "eager"), load(berts, "student", "eager")
    student.config.attention_probs_dropout_prob = 0.0
    Distiller(teacher, student, one_term("attention_mse"), example_inputs=batch[0])
    assert capsys.readouterr().out == ""


def test_the_students_attention_dropout_is_noted(berts, batch, capsys) -> None:
    teacher, student = load(berts, "teacher", "eager"), load(berts, "student", "eager")
    Distiller(teacher, student, one_term("minilm"), example_inputs=batch[0])
    assert "the student's attention dropout (0.1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "params", "student", "message"),
    [
        ("hidden_mse", {"layers": {2: 5}}, "student", r"layers \{2: 5\}: teacher index 5 is out of range: the "
         r"teacher's hidden states \(0 = embeddings\) are numbered 0..4"),
        ("hidden_mse", {"layers": {3: 4}}, "student", "student index 3 is out of range"),
        ("cosine", {"student_layer": 3}, "student", "student_layer=3 is out of range"),
        ("attention_mse", {"layers": {0: 1}}, "student", r"layers \{0: 1\} is out of range: the student's layers "
         "are 1..2 and the teacher's 1..4"),
        ("attention_mse", {}, "student3", "student layer 1 has 3 attention heads and teacher layer 2 has 2"),
        ("minilm", {}, "student3", "the student's last layer has 3 attention heads and the teacher's 2"),
        ("minilm", {"student_values": "bert.pooler.dense"}, "student", r"student_values='bert.pooler.dense' gave "
         r"\(3, 32\), not the values"),
    ],
)  # fmt: skip
def test_bad_maps_and_head_counts_are_one_line_at_the_probe(name, params, student, message, berts, batch) -> None:
    with pytest.raises(TinykdError, match=message) as info:
        Distiller(load(berts, "teacher"), load(berts, student), one_term(name, params), example_inputs=batch[0])
    assert "\n" not in str(info.value) and str(info.value).startswith(f"loss term '{name}': ")


@pytest.mark.parametrize("name", NEW_TERMS)
def test_a_vision_model_is_one_line_for_every_transformer_term(name: str) -> None:
    teacher = create_model("resnet8", num_classes=10, in_channels=1)
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    expected = "found no value projection" if name == "minilm" else "takes a tensor"
    with pytest.raises(TinykdError, match=expected) as info:
        Distiller(teacher, student, one_term(name), example_inputs=torch.randn(2, 1, 28, 28))
    assert "\n" not in str(info.value)


def test_forward_outputs_asks_only_when_told_and_names_what_is_missing(berts, batch) -> None:
    model = load(berts, "student").eval()
    inputs, _ = batch
    plain = forward_outputs(model, inputs)
    assert plain.hidden_states is None and plain.attentions is None
    both = forward_outputs(model, inputs, hidden_states=True)
    assert len(both.hidden_states) == 3 and both.hidden_states[0].shape == (3, 7, 32)
    assert torch.equal(both.logits, plain.logits)
    with pytest.raises(TinykdError, match=r"the teacher \(BertForSequenceClassification\) returned no attention "
                       r"probabilities when asked \(its attention implementation is 'sdpa'"):  # fmt: skip
        forward_outputs(model, inputs, attentions=True, role="teacher")
    assert eager_attention(model) and not eager_attention(model)
    attentions = forward_outputs(model, inputs, attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape == (3, 2, 7, 7)
    assert attentions[0][1, :, :, 5:].abs().max() == 0  # padded keys: probability 0
    assert eager_attention(nn.Linear(2, 2)) is False


# --- kd and ce on token logits (masked-LM) ---------------------------------------------------------------------------


def _token_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    targets = torch.tensor([[3, -100, -100, 1], [-100, 5, -100, -100]])
    return s, t, targets


def test_kd_on_tokens_averages_over_the_positions_with_a_target() -> None:
    s, t, targets = _token_case()
    temperature = 2.0
    per_position = []
    for b, i in [(0, 0), (0, 3), (1, 1)]:
        p_t = F.softmax(t[b, i] / temperature, dim=0)
        per_position.append((p_t * (p_t.log() - F.log_softmax(s[b, i] / temperature, dim=0))).sum())
    expected = torch.stack(per_position).mean() * temperature**2
    term = build_loss_term("kd", {"temperature": temperature})
    assert torch.allclose(term(Outputs(s), Outputs(t), targets), expected, atol=1e-6)
    # padding is left out too, even where the targets do not say so
    masked = Outputs(s, mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    expected = torch.stack(per_position[::2]).mean() * temperature**2
    assert torch.allclose(term(masked, Outputs(t), targets), expected, atol=1e-6)


def test_ce_on_tokens_ignores_minus_100() -> None:
    s, _, targets = _token_case()
    expected = -torch.stack([F.log_softmax(s[b, i], 0)[targets[b, i]] for b, i in [(0, 0), (0, 3), (1, 1)]]).mean()
    term = build_loss_term("ce", {})
    assert torch.allclose(term(Outputs(s), None, targets), expected, atol=1e-6)
    assert term(Outputs(s), None, torch.full((2, 4), -100)).item() == 0.0  # no masked token: 0, not NaN


def test_classification_kd_and_ce_are_bit_for_bit_unchanged() -> None:
    s, t, y, temperature = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,)), 3.0
    log_p_s = F.log_softmax(s.float() / temperature, dim=1)
    log_p_t = F.log_softmax(t.float() / temperature, dim=1)
    before = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean() * temperature**2
    assert torch.equal(kd_loss(s, t, temperature), before)
    assert torch.equal(build_loss_term("kd", {"temperature": 3})(Outputs(s), Outputs(t), y), before)
    ce = build_loss_term("ce", {"label_smoothing": 0.1})(Outputs(s), None, y)
    assert torch.equal(ce, F.cross_entropy(s, y, label_smoothing=0.1))
