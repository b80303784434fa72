import numpy as np
import pytest

from qa_lib.data import Answer, QAExample
from qa_lib.features import (
    CLS_INDEX,
    NOT_CONTEXT,
    answer_coverage,
    char_to_token_positions,
    keep_answerless_windows,
    prepare_eval_features,
    prepare_train_features,
    span_to_tokens,
    strip_span,
    window_features,
)


def example(context, answer, start=None, question="问题是什么？", qid="q"):
    start = context.index(answer) if start is None else start
    return QAExample(qid, "", context, question, (Answer(answer, start),))


def test_simple_path_uses_last_character_and_cls_when_truncated(offline_tokenizer):
    context = "甲乙丙丁戊己庚辛"
    enc = offline_tokenizer(["问？", "问？"], [context, context], truncation="only_second", max_length=8)
    # question tokens: [CLS] 问 ？ [SEP] -> context starts at token 4; max_length 8 keeps 3 context chars.
    starts, ends = char_to_token_positions(enc, [1, 2], [3, 6])
    assert starts.dtype == ends.dtype == __import__("torch").long
    assert (starts[0].item(), ends[0].item()) == (5, 6)  # 乙丙: end from char 2, not 3
    assert (starts[1].item(), ends[1].item()) == (CLS_INDEX, CLS_INDEX)  # 丙丁戊己 runs past the cut


def test_windows_overlap_by_doc_stride_and_cover_the_context(offline_tokenizer):
    contexts = ["北京是中国的首都。" * k + "Hello World 2019年，ＡＢＣ。" for k in (1, 5, 13)]
    examples = [example(c, "首都", qid=str(i)) for i, c in enumerate(contexts)]
    features = window_features(offline_tokenizer, examples, 32, 8)
    assert features["example_index"] == sorted(features["example_index"])
    for index, context in enumerate(contexts):
        windows = [w for w, i in enumerate(features["example_index"]) if i == index]
        assert [features["window_in_example"][w] for w in windows] == list(range(len(windows)))
        spans = [features["offsets"][w][features["offsets"][w][:, 0] != NOT_CONTEXT] for w in windows]
        assert spans[0][0, 0] == 0 and spans[-1][-1, 1] == len(context)
        for before, after in zip(spans, spans[1:]):
            assert before[-8:].tolist() == after[:8].tolist()  # doc_stride context tokens shared
        for w in windows:  # NOT_CONTEXT exactly on [CLS] question [SEP] and the final [SEP]
            outside = features["offsets"][w][:, 0] == NOT_CONTEXT
            assert outside.tolist() == [t == 0 for t in features["token_type_ids"][w][:-1]] + [True]


def test_a_question_leaving_no_more_than_doc_stride_context_tokens_is_refused(offline_tokenizer):
    examples = [example("甲乙丙丁" * 30, "乙", question="问题" * 15)]  # 30 tokens: 64 - 30 - 3 = 31 <= 40
    with pytest.raises(ValueError, match="doc_stride=40"):
        window_features(offline_tokenizer, examples, 64, 40)
    assert len(window_features(offline_tokenizer, examples, 64, 30)["input_ids"]) > 1


def offsets_for(pairs):
    return np.array(pairs, dtype=np.int64)


def test_span_to_tokens_searches_inward():
    # [CLS] q [SEP] then context tokens: "ab" (0-2), "[UNK]" covering 3-6, "x" (7-8); whitespace at 2 and 6
    offsets = offsets_for([(-1, -1), (-1, -1), (-1, -1), (0, 2), (3, 6), (7, 8), (-1, -1)])
    assert span_to_tokens(offsets, 4, 5) == (4, 4)  # inside the multi-character [UNK]
    assert span_to_tokens(offsets, 2, 8) == (4, 5)  # starts on whitespace: next token
    assert span_to_tokens(offsets, 0, 7) == (3, 4)  # ends on whitespace: previous token
    assert span_to_tokens(offsets, 1, 2) == (3, 3)  # inside a word piece
    assert span_to_tokens(offsets, 7, 9) == (CLS_INDEX, CLS_INDEX)  # runs past the window


def test_strip_span_skips_outer_whitespace():
    assert strip_span(" ab ", 0, 4) == (1, 3)
    assert strip_span("   ", 0, 3)[0] == strip_span("   ", 0, 3)[1]


def test_labels_inside_window_at_last_token_and_cls_across_boundary(offline_tokenizer):
    context = "".join(chr(0x4E00 + i) for i in range(60))
    question = "问"
    max_length, stride = 24, 6  # [CLS] 问 [SEP] ... [SEP]: 20 context tokens per window, step 14
    last_of_first_window = context[19]
    crossing = context[17:23]  # chars 17..22: crosses the end of window 0 (ends at 19), inside window 1 (14..33)
    examples = [
        example(context, last_of_first_window, qid="edge", question=question),
        example(context, crossing, qid="cross", question=question),
    ]
    features = prepare_train_features(offline_tokenizer, examples, max_length, stride)
    labels = list(
        zip(
            features["example_index"],
            features["window_in_example"],
            features["start_positions"],
            features["end_positions"],
        )
    )
    assert (0, 0, 22, 22) in labels  # token 3 + 19 = 22, the last context token of window 0
    assert (1, 0, CLS_INDEX, CLS_INDEX) in labels
    assert (1, 1, 3 + 3, 3 + 8) in labels  # window 1 starts at context token 14
    assert min(features["start_positions"]) >= 0 and min(features["end_positions"]) >= 0
    assert answer_coverage(features, 2) == 1.0


def test_whitespace_and_unk_answers_map_to_their_tokens(offline_tokenizer):
    context = "他说 ＡＢＣ公司 在北京"
    examples = [example(context, " ＡＢＣ公司", qid="ws"), example(context, "ＢＣ公司", qid="unk")]
    features = prepare_train_features(offline_tokenizer, examples)
    for w in range(2):
        ids = features["input_ids"][w]
        tokens = offline_tokenizer.convert_ids_to_tokens(
            ids[features["start_positions"][w] : features["end_positions"][w] + 1].tolist()
        )
        assert tokens == ["[UNK]", "公", "司"]


def test_eval_features_keep_example_ids(offline_tokenizer):
    examples = [example("甲乙丙" * 30, "乙", qid="a"), example("丁戊", "戊", qid="b")]
    features = prepare_eval_features(offline_tokenizer, examples, 32, 8)
    assert features["example_id"] == ["a" if i == 0 else "b" for i in features["example_index"]]
    assert features["example_id"].count("a") > 1


def test_keep_answerless_windows_drops_only_cls_windows_and_counts_them():
    starts = [0, 5, 0, 0, 7, 0, 3, 0] * 50
    features = {"start_positions": starts, "input_ids": list(range(len(starts)))}
    answerless = starts.count(CLS_INDEX)
    none, dropped = keep_answerless_windows(features, 0.0)
    assert dropped == answerless and none["start_positions"] == [s for s in starts if s != CLS_INDEX]
    assert none["input_ids"] == [i for i, s in enumerate(starts) if s != CLS_INDEX]  # rows stay aligned
    everything, dropped = keep_answerless_windows(features, 1.0)
    assert dropped == 0 and everything == features
    half, dropped = keep_answerless_windows(features, 0.5, seed=1)
    assert 0.35 * answerless < answerless - dropped < 0.65 * answerless
    assert len(half["input_ids"]) == len(starts) - dropped
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        keep_answerless_windows(features, 1.5)
