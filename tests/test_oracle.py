"""Gold labels through the whole windowed pipeline on real CMRC 2018 data with the real vocabulary.

One-hot logits at each window's labelled tokens go through n-best decoding across windows and are
scored with the official metric. Anything short of a perfect score must belong to one of the two
exception classes that no decoder can fix:

1. the answer starts or ends inside a multi-character token (dev "4个" inside the token "34");
2. the answer is longer than doc_stride tokens, so it may straddle every window boundary (trial
   has answers of several hundred characters), and no window holds it whole.
"""

import pytest

from qa_lib.data import cmrc_file, load_squad, references_of
from qa_lib.decoding import gold_logits, postprocess_predictions
from qa_lib.features import CLS_INDEX, label_windows, prepare_eval_features, strip_span
from qa_lib.metric import corpus_scores, exact_match


def inside_a_token(example, offsets_of_context):
    start, end = strip_span(example.context, example.answers[0].start, example.answers[0].end)
    boundaries = {int(b) for pair in offsets_of_context for b in pair}
    return start not in boundaries or end not in boundaries


def context_offsets(features, index):
    """Offsets of the context tokens of example ``index`` in all its windows."""
    windows = [o for o, i in zip(features["offsets"], features["example_index"]) if i == index]
    return [pair for offsets in windows for pair in offsets[offsets[:, 0] >= 0].tolist()]


@pytest.mark.parametrize("split", ["dev", "trial"])
@pytest.mark.parametrize("max_length", [512, 384])
def test_oracle_exact_match(real_tokenizer, cmrc_dir, split, max_length):
    examples, _ = load_squad(cmrc_file(split, cmrc_dir))
    features = label_windows(prepare_eval_features(real_tokenizer, examples, max_length, 128), examples)
    starts, ends = gold_logits(features)
    predictions, _ = postprocess_predictions(examples, features, starts, ends, max_answer_length=max_length)
    references = references_of(examples)
    scores = corpus_scores(references, predictions)
    assert scores["EM"] >= 99.5 and scores["SKIP"] == 0

    covered = {i for i, s in zip(features["example_index"], features["start_positions"]) if s != CLS_INDEX}
    for i, example in enumerate(examples):
        answer_tokens = real_tokenizer(example.answers[0].text, add_special_tokens=False)["input_ids"]
        if i not in covered:  # every answer is covered by a window unless it is longer than the overlap
            assert len(answer_tokens) > 128, example.id
        elif not exact_match(predictions[example.id], references[example.id]):
            assert inside_a_token(example, context_offsets(features, i)), (example.id, predictions[example.id])
