"""DKD, RKD, PKT and CRD: the maths on small hand-made cases, then each term inside a Distiller."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinykd.distill import Distiller
from tinykd.errors import TinykdError
from tinykd.losses import Outputs, build_loss_term, kd_loss
from tinykd.losses.crd import nce_loss
from tinykd.losses.dkd import dkd_loss
from tinykd.losses.pkt import pkt_loss
from tinykd.losses.rkd import pairwise_distances, rkd_loss

# --- DKD --------------------------------------------------------------------------------------------------------


def _dkd_by_probabilities(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float,
                          temp: float) -> torch.Tensor:  # fmt: skip
    """DKD written as mdistiller writes it: masked probabilities, the -1000 trick for the non-target part."""
    gt = F.one_hot(y, s.shape[1]).float()
    p_s, p_t = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum() * temp**2 / len(y)
    q_t = F.softmax(t / temp - 1000.0 * gt, 1)
    log_q_s = F.log_softmax(s / temp - 1000.0 * gt, 1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * temp**2 / len(y)
    return alpha * tckd + beta * nckd


def test_dkd_matches_the_probability_form_of_the_reference_code() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5) * 2, torch.randint(0, 5, (6,))
    want = _dkd_by_probabilities(s, t, y, 1.0, 8.0, 4.0)
    assert torch.allclose(dkd_loss(s, t, y, 1.0, 8.0, 4.0), want, atol=1e-5)


def test_kd_is_tckd_plus_the_teacher_suppressed_nckd() -> None:
    # the paper's equation (1): KD = TCKD + (1 - b_t) NCKD, per sample; it holds at any temperature
    torch.manual_seed(1)
    s, t, y = torch.randn(1, 7), torch.randn(1, 7), torch.tensor([3])
    tckd, nckd = dkd_loss(s, t, y, 1.0, 0.0, 2.0), dkd_loss(s, t, y, 0.0, 1.0, 2.0)
    b_t = F.softmax(t / 2.0, 1)[0, 3]
    assert torch.allclose(kd_loss(s, t, 2.0), tckd + (1 - b_t) * nckd, atol=1e-5)


def test_dkd_is_zero_for_identical_logits_finite_when_confident_and_warms_up() -> None:
    x, y = torch.randn(4, 10), torch.randint(0, 10, (4,))
    term = build_loss_term("dkd", {"warmup": 4})
    assert term(Outputs(x), Outputs(x), y).abs() < 1e-5
    confident = torch.full((4, 10), -1e4).scatter(1, y[:, None], 1e4)  # probabilities of exactly 0 and 1
    assert torch.isfinite(term(Outputs(torch.randn(4, 10)), Outputs(confident), y))
    s = Outputs(torch.randn(4, 10))
    full = dkd_loss(s.logits, x, y, 1.0, 8.0, 4.0)
    for epoch, share in ((1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):
        term.set_epoch(epoch)
        assert torch.allclose(term(s, Outputs(x), y), share * full)


def test_dkd_gradients_are_finite_and_reach_the_student() -> None:
    s, t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    build_loss_term("dkd", {"warmup": 0})(Outputs(s), Outputs(t), torch.tensor([0, 1, 2, 3])).backward()
    assert s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()


def test_dkd_rejects_bad_parameters_in_one_line() -> None:
    for params in ({"temperature": 0}, {"beta": -1}, {"warmup": -2}):
        with pytest.raises(TinykdError, match="loss term 'dkd'"):
            build_loss_term("dkd", params)


# --- RKD --------------------------------------------------------------------------------------------------------


def test_rkd_of_a_hand_made_triangle() -> None:
    # student: the 3-4-5 right triangle; teacher: an equilateral one. Distances are normalized by their mean.
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    d_s = torch.tensor([[0, 3, 4], [3, 0, 5], [4, 5, 0]], dtype=torch.float) / 4.0  # mean of 3,4,5 (twice each)
    d_t = (1 - torch.eye(3)) / 1.0
    assert torch.allclose(pairwise_distances(s), d_s * 4.0, atol=1e-5)
    want_d = F.smooth_l1_loss(d_s, d_t)
    assert torch.allclose(rkd_loss(s, t, distance=1.0, angle=0.0), want_d, atol=1e-5)
    # angles: at vertex 0 the student's is 90 degrees (cos 0), the teacher's 60 (cos 0.5), and so on; the
    # angle terms are the 27 entries cos(e_i - e_j, e_k - e_j); the diagonal i == j or k == j gives 0 for both
    def cosines(e: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(3, 3, 3)
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    if i != j and k != j:
                        out[j, i, k] = F.cosine_similarity(e[i] - e[j], e[k] - e[j], dim=0)
        return out.reshape(-1)

    want_a = F.smooth_l1_loss(cosines(s), cosines(t))
    assert torch.allclose(rkd_loss(s, t, distance=0.0, angle=1.0), want_a, atol=1e-5)


def test_rkd_is_zero_for_the_same_shape_at_another_scale_and_widths_are_free() -> None:
    e = torch.randn(8, 5)
    assert rkd_loss(3.0 * e, e) < 1e-6  # relations are scale-free
    rotated = torch.cat([e, torch.zeros(8, 3)], 1) @ torch.linalg.qr(torch.randn(8, 8))[0]  # wider, rotated
    assert rkd_loss(e, rotated) < 1e-5
    assert rkd_loss(torch.randn(8, 5), e) > 0


def test_rkd_with_duplicate_embeddings_stays_finite() -> None:
    e = torch.zeros(4, 3, requires_grad=True)
    loss = rkd_loss(e, torch.randn(4, 6))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e.grad).all()


# --- PKT --------------------------------------------------------------------------------------------------------


def test_pkt_of_a_hand_made_case() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # orthogonal: kernel 0.5 off the diagonal, 1 on it
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # identical: kernel 1 everywhere
    p_s = torch.tensor([[1.0, 0.5], [0.5, 1.0]]) / 1.5
    p_t = torch.full((2, 2), 0.5)
    want = (p_t * torch.log((p_t + 1e-7) / (p_s + 1e-7))).mean()
    assert torch.allclose(pkt_loss(s, t), want, atol=1e-6)


def test_pkt_is_zero_for_the_same_directions_and_positive_otherwise() -> None:
    e = torch.randn(6, 4)
    assert pkt_loss(2.0 * e, e).abs() < 1e-6
    assert pkt_loss(torch.randn(6, 9), e) > 0


# --- CRD --------------------------------------------------------------------------------------------------------


def test_nce_loss_of_a_hand_made_case() -> None:
    scores = torch.tensor([[2.0, 0.5, 0.1]])  # positive 2, two negatives; N = 4 samples, so K/N = 0.5
    noise = 0.5
    want = -(math.log(2 / (2 + noise + 1e-7)) + math.log(noise / (0.5 + noise + 1e-7))
             + math.log(noise / (0.1 + noise + 1e-7)))  # fmt: skip
    assert nce_loss(scores, 4).item() == pytest.approx(want, rel=1e-6)


class _Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, width), nn.ReLU())
        self.fc = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def _crd(num_samples: int = 20, **params: float) -> tuple[Distiller, nn.Module, nn.Module]:
    torch.manual_seed(0)
    student, teacher = _Net(6), _Net(10)
    term = build_loss_term("crd", {"negatives": 5, "feat_dim": 4, **params})
    return Distiller(teacher, student, {"crd": term}, torch.randn(2, 3, 4), num_samples=num_samples), student, teacher


def test_crd_reads_the_classifiers_input_and_trains_student_and_heads_only() -> None:
    from tinykd.data import Indexed

    distiller, student, teacher = _crd()
    term = distiller.terms["crd"]
    assert term.student_path == "fc:input" and term.teacher_path == "fc:input"
    x, index = torch.randn(4, 3, 4), torch.tensor([0, 5, 7, 19])
    before = term.bank_teacher.clone()
    _, losses = distiller(Indexed(x, index), torch.zeros(4, dtype=torch.long))
    losses["crd"].backward()
    assert torch.isfinite(losses["crd"]) and losses["crd"] > 0
    assert all(p.grad is not None for p in student.body.parameters()) and student.fc.weight.grad is None
    assert term.embed_student.weight.grad is not None and term.embed_teacher.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    changed = (term.bank_teacher != before).any(1)
    assert changed.nonzero().flatten().tolist() == [0, 5, 7, 19]  # the batch's rows, and only those
    assert torch.allclose(term.bank_teacher.norm(dim=1)[changed], torch.ones(4))
    assert (term.z > 0).all()  # Z fixed from the first batch
    z = term.z.clone()
    distiller(Indexed(x, index), torch.zeros(4, dtype=torch.long))
    assert torch.equal(term.z, z)


def test_crd_scores_against_the_whole_bank_equal_the_gathered_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import tinykd.losses.crd as crd

    distiller, _, _ = _crd()
    term = distiller.terms["crd"]
    v = torch.randn(4, 4, requires_grad=True)
    rows = torch.randint(0, 20, (4, 6))
    want = torch.stack([term.bank_teacher[rows[b]] @ v[b] for b in range(4)])  # by hand, row by row
    dense = term._dots(term.bank_teacher, v, rows)  # 20 rows <= 32 x 6: the dense product
    (grad_dense,) = torch.autograd.grad(dense.square().sum(), v)
    monkeypatch.setattr(crd, "DENSE_RATIO", 0)  # the gathered rows
    gathered = term._dots(term.bank_teacher, v, rows)
    (grad_gathered,) = torch.autograd.grad(gathered.square().sum(), v)
    assert torch.allclose(dense, want, atol=1e-6) and torch.allclose(gathered, want, atol=1e-6)
    assert torch.allclose(grad_dense, grad_gathered, atol=1e-5)


def test_crd_memory_is_in_the_state_dict_and_round_trips() -> None:
    from tinykd.data import Indexed

    distiller, _, _ = _crd()
    distiller(Indexed(torch.randn(4, 3, 4), torch.tensor([1, 2, 3, 4])), torch.zeros(4, dtype=torch.long))
    state = distiller.state_dict()
    assert {"terms.crd.bank_student", "terms.crd.bank_teacher", "terms.crd.z"} <= set(state)
    other, _, _ = _crd()
    other.load_state_dict(state)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())


def test_crd_refuses_what_it_cannot_do_in_one_line() -> None:
    with pytest.raises(TinykdError, match="need num_samples"):
        Distiller(_Net(6), _Net(6), {"crd": build_loss_term("crd", {})}, torch.randn(2, 3, 4))
    with pytest.raises(TinykdError, match="5 negatives need a training set of more than 5 samples"):
        _crd(num_samples=5)
    distiller, _, _ = _crd()
    with pytest.raises(ValueError, match="needs the training-set index"):
        distiller(torch.randn(4, 3, 4), torch.zeros(4, dtype=torch.long))


# --- the embedding terms inside a Distiller ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rkd", "pkt"])
def test_embedding_terms_find_the_classifier_input_and_accept_explicit_paths(name: str) -> None:
    torch.manual_seed(0)
    student, teacher = _Net(6), _Net(10)
    distiller = Distiller(teacher, student, {name: build_loss_term(name, {})}, torch.randn(2, 3, 4))
    _, losses = distiller(torch.randn(5, 3, 4), torch.zeros(5, dtype=torch.long))
    losses[name].backward()
    assert torch.isfinite(losses[name]) and student.fc.weight.grad is None  # the classifier is after the tap
    assert student.body[1].weight.grad is not None and teacher.body[1].weight.grad is None
    explicit = Distiller(teacher, student, {name: build_loss_term(name, {"student": "body", "teacher": "body"})},
                         torch.randn(2, 3, 4))  # fmt: skip
    assert torch.isfinite(explicit(torch.randn(5, 3, 4), torch.zeros(5, dtype=torch.long))[1][name])
    with pytest.raises(TinykdError, match="no module 'nope'"):
        Distiller(teacher, student, {name: build_loss_term(name, {"student": "nope"})}, torch.randn(2, 3, 4))
    with pytest.raises(TinykdError, match="has no nn.Linear classifier"):
        Distiller(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), {name: build_loss_term(name, {})}, torch.randn(2, 3, 4, 4))
