import numpy as np
import pytest
import torch

from qa_lib.data import Answer, QAExample, cmrc_file, load_squad
from qa_lib.decoding import (
    DEFAULT_MAX_ANSWER_LENGTH,
    Candidate,
    argmax_positions,
    best_spans,
    n_best_spans,
    postprocess_predictions,
    rank_candidates,
    span_accuracy,
    span_scores,
)
from qa_lib.features import NOT_CONTEXT


def brute_force_spans(start, end, start_ok, end_ok, max_len):
    spans = [
        (float(start[i] + end[j]), i, j)
        for i in range(len(start))
        for j in range(i, min(i + max_len, len(end)))
        if start_ok[i] and end_ok[j]
    ]
    return sorted(spans, key=lambda s: -s[0])


def test_argmax_and_accuracy():
    start = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    s, e = argmax_positions(start, end)
    assert s.tolist() == [1, 0] and e.tolist() == [2, 1]
    assert span_accuracy(s, torch.tensor([1, 1])) == pytest.approx(0.5)


def test_best_span_fixes_end_before_start_and_respects_the_context():
    # argmax would give start 4, end 1; the question tokens 0-1 are not context.
    start = torch.tensor([9.0, 0.0, 0.0, 1.0, 5.0, 0.0])
    end = torch.tensor([0.0, 9.0, 0.0, 2.0, -1.0, 0.5])
    context = torch.tensor([False, False, True, True, True, True])
    s, e, score = best_spans(start, end, context, max_answer_length=10)
    assert (s.item(), e.item()) == (4, 5) and score.item() == pytest.approx(5.5)


def test_best_span_with_all_negative_logits_and_exact_max_length():
    start = torch.tensor([-5.0, -1.0, -9.0, -9.0])
    end = torch.tensor([-9.0, -9.0, -9.0, -1.0])
    context = torch.ones(4, dtype=torch.bool)
    assert best_spans(start, end, context, max_answer_length=3)[:2] == (1, 3)  # length 3 is allowed
    s, e, _ = best_spans(start, end, context, max_answer_length=2)
    assert e - s + 1 <= 2


def test_window_without_context_gives_minus_infinity():
    s, e, score = best_spans(torch.zeros(5), torch.zeros(5), torch.zeros(5, dtype=torch.bool), 3)
    assert (s.item(), e.item()) == (0, 0) and score.item() == float("-inf")


@pytest.mark.parametrize("seed", range(20))
def test_n_best_spans_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    length, max_len, n = 17, 1 + seed % 6, 7
    start, end = rng.normal(size=length).astype(np.float32), rng.normal(size=length).astype(np.float32)
    context = rng.random(length) > 0.3
    scores = span_scores(start, end, context, max_len)
    starts, lengths = n_best_spans(scores, n)
    expected = brute_force_spans(start, end, context, context, max_len)[:n]
    assert list(zip(starts.tolist(), (starts + lengths).tolist())) == [(i, j) for _, i, j in expected]
    assert scores[starts, lengths].tolist() == pytest.approx([s for s, _, _ in expected], rel=1e-6)


def e7_matrix(start, end, context, max_len):
    """Exercise E7's (tokens x tokens) matrix: start[i] + end[j], -inf for invalid spans."""
    i, j = np.indices((start.shape[-1], start.shape[-1]))
    valid = (j >= i) & (j - i < max_len) & context[..., :, None] & context[..., None, :]
    return np.where(valid, start[..., :, None] + end[..., None, :], -np.inf)


@pytest.mark.parametrize("max_len", [1, 7, 40, 100])
def test_span_scores_are_e7s_matrix_on_its_band(max_len):
    rng = np.random.default_rng(max_len)
    start, end = rng.normal(size=(3, 40)).astype(np.float32), rng.normal(size=(3, 40)).astype(np.float32)
    context = rng.random((3, 40)) > 0.2
    band, matrix = span_scores(start, end, context, max_len), e7_matrix(start, end, context, max_len)
    assert band.shape == (3, 40, min(max_len, 40)) and band.dtype == np.float32
    for s in range(40):
        for length in range(band.shape[-1]):
            expected = matrix[:, s, s + length] if s + length < 40 else np.full(3, -np.inf)
            assert band[:, s, length].tolist() == expected.tolist()
    # Everything of the matrix outside the band is -inf: the band holds every valid span.
    assert np.isfinite(band).sum() == np.isfinite(matrix).sum()


def test_end_before_start_is_never_a_span():
    rng = np.random.default_rng(0)
    start, end = rng.normal(size=(3, 40)), rng.normal(size=(3, 40))
    s, e, _ = best_spans(torch.from_numpy(start), torch.from_numpy(end), torch.ones(3, 40, dtype=torch.bool), 40)
    assert (s <= e).all()
    matrix = torch.from_numpy(e7_matrix(start, end, np.ones((3, 40), dtype=bool), 40)).flatten(-2)
    assert s.tolist() == (matrix.argmax(-1) // 40).tolist() and e.tolist() == (matrix.argmax(-1) % 40).tolist()


def test_equal_scores_keep_the_earlier_start_then_the_shorter_span():
    context = np.array([False, True, True, True, False])
    starts, lengths = n_best_spans(span_scores(np.zeros(5), np.zeros(5), context, 2), 4)
    assert list(zip(starts.tolist(), (starts + lengths).tolist())) == [(1, 1), (1, 2), (2, 2), (2, 3)]
    s, e, score = best_spans(torch.zeros(5), torch.zeros(5), torch.from_numpy(context), 2)
    assert (s.item(), e.item(), score.item()) == (1, 1, 0.0)


def test_a_window_with_fewer_valid_spans_than_asked_gives_them_all():
    context = np.array([False, True, True, False])
    starts, lengths = n_best_spans(span_scores(np.arange(4.0), np.arange(4.0), context, 100), 20)
    assert list(zip(starts.tolist(), (starts + lengths).tolist())) == [(2, 2), (1, 2), (1, 1)]


def test_best_spans_batched_equals_one_by_one():
    generator = torch.Generator().manual_seed(1)
    start, end = torch.randn(4, 30, generator=generator), torch.randn(4, 30, generator=generator)
    context = torch.zeros(4, 30, dtype=torch.bool)
    context[:, 8:29] = True
    batched = best_spans(start, end, context, 5)
    for w in range(4):
        single = best_spans(start[w], end[w], context[w], 5)
        assert [t[w].item() for t in batched] == [t.item() for t in single]


def windows_for(context_length, window_tokens, step, prefix=3):
    """Offsets of windows over a context of one-character tokens."""
    offsets, starts = [], list(range(0, max(context_length - window_tokens, 0) + 1, step))
    for start in starts:
        n = min(window_tokens, context_length - start)
        o = np.full((prefix + n + 1, 2), NOT_CONTEXT)
        o[prefix : prefix + n, 0] = np.arange(start, start + n)
        o[prefix : prefix + n, 1] = np.arange(start, start + n) + 1
        offsets.append(o)
    return offsets


def test_nbest_across_windows_equals_brute_force_over_character_spans():
    rng = np.random.default_rng(0)
    context = "".join(chr(0x4E00 + i) for i in range(40))
    example = QAExample("x", "", context, "q", (Answer(context[3], 3),))
    offsets = windows_for(40, 16, 10)
    features = {"example_index": [0] * len(offsets), "offsets": offsets}
    starts = [rng.normal(size=len(o)).astype(np.float32) for o in offsets]
    ends = [rng.normal(size=len(o)).astype(np.float32) for o in offsets]
    predictions, nbest = postprocess_predictions([example], features, starts, ends, n_best=5, max_answer_length=4)
    best_by_span = {}
    for o, s, e in zip(offsets, starts, ends):
        ok = o[:, 0] != NOT_CONTEXT
        for score, i, j in brute_force_spans(s, e, ok, ok, 4):
            key = (int(o[i, 0]), int(o[j, 1]))
            best_by_span[key] = max(score, best_by_span.get(key, float("-inf")))
    expected = sorted(best_by_span.items(), key=lambda kv: -kv[1])[:5]
    assert [(c.start_char, c.end_char) for c in nbest["x"]] == [k for k, _ in expected]
    assert predictions["x"] == context[expected[0][0][0] : expected[0][0][1]]
    assert sum(c.probability for c in nbest["x"]) == pytest.approx(1.0)


def test_ranking_keeps_each_span_once_best_first_with_probabilities():
    found = [
        Candidate("乙", 1.0, 1, 2),
        Candidate("甲乙", 3.0, 0, 2),
        Candidate("乙", 2.0, 1, 2),  # the same characters from another window, with a better score
        Candidate("丙", 2.0, 2, 3),  # a tie with 乙: the earlier span first
        Candidate("甲", 0.5, 0, 1),
    ]
    ranked = rank_candidates(found, n_best=3)
    assert [(c.text, c.score) for c in ranked] == [("甲乙", 3.0), ("乙", 2.0), ("丙", 2.0)]
    weights = np.exp([0.0, -1.0, -1.0])
    assert [c.probability for c in ranked] == pytest.approx((weights / weights.sum()).tolist())
    assert rank_candidates([], n_best=3) == []


def test_logits_beyond_the_window_are_padding_and_ignored():
    context = "甲乙丙"
    example = QAExample("p", "", context, "q", (Answer("乙", 1),))
    offsets = np.array([[-1, -1], [0, 1], [1, 2], [2, 3], [-1, -1]])
    padded = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 50.0, 50.0])  # two padding positions with huge logits
    predictions, nbest = postprocess_predictions(
        [example], {"example_index": [0], "offsets": [offsets]}, [padded], [padded], max_answer_length=2
    )
    assert predictions["p"] == "乙" and nbest["p"][0].score == 2.0


def test_combining_marks_stay_with_their_letter():
    context = "希伯来文：יִרְמְיָהוּ）"
    word_end = context.index("）")
    example = QAExample("h", "", context, "q", (Answer("x", 0),))
    offsets = np.array([[-1, -1], [5, word_end - 1], [-1, -1]])  # the tokenizer stops before the last mark
    predictions, _ = postprocess_predictions(
        [example], {"example_index": [0], "offsets": [offsets]}, [np.zeros(3)], [np.zeros(3)]
    )
    assert predictions["h"] == context[5:word_end]


def test_default_max_answer_length_coverage(real_tokenizer, cmrc_dir):
    """The documented coverage of DEFAULT_MAX_ANSWER_LENGTH (100 tokens) on both files."""
    coverage = {}
    for split in ("dev", "trial"):
        examples, _ = load_squad(cmrc_file(split, cmrc_dir))
        texts = [a.text for e in examples for a in e.answers]
        lengths = np.array([len(ids) for ids in real_tokenizer(texts, add_special_tokens=False)["input_ids"]])
        coverage[split] = ((lengths <= DEFAULT_MAX_ANSWER_LENGTH).mean(), (lengths <= 30).mean())
    assert coverage["dev"][0] == 1.0 and coverage["dev"][1] == pytest.approx(0.945, abs=0.001)
    assert coverage["trial"][0] == pytest.approx(0.966, abs=0.001) and coverage["trial"][1] == pytest.approx(
        0.663, abs=0.001
    )
