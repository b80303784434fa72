import json
import random
import re
from collections import Counter

import pytest

from qa_lib.course.synthetic import (
    ENTITY_FILLERS,
    FILLER_ROOM,
    GENERIC_FILLERS,
    RELATIONS,
    VALUE_MAKERS,
    generate_squad,
    write_squad,
)

FIRST_WINDOW_TOKENS = 512
DEMO_DATA = dict(min_context_chars=200, max_context_chars=400, entities_per_kind=1)


@pytest.fixture(scope="module")
def dataset():
    return generate_squad(40, seed=3)


def paragraphs(data):
    return [paragraph for article in data["data"] for paragraph in article["paragraphs"]]


def questions(data):
    return [(paragraph["context"], qa) for paragraph in paragraphs(data) for qa in paragraph["qas"]]


def test_same_seed_same_data_other_seed_other_data(dataset):
    assert generate_squad(40, seed=3) == dataset
    other = generate_squad(40, seed=4)
    assert [p["context"] for p in paragraphs(other)] != [p["context"] for p in paragraphs(dataset)]


def test_squad_v1_shape(dataset):
    assert dataset["version"] == "synthetic-v1"
    assert len(dataset["data"]) == 40
    for article in dataset["data"]:
        assert article["title"] and len(article["paragraphs"]) == 1
        assert len(article["paragraphs"][0]["qas"]) == 6


def test_answers_sit_at_answer_start_and_occur_once(dataset):
    for context, qa in questions(dataset):
        (answer,) = qa["answers"]
        start = answer["answer_start"]
        assert context[start : start + len(answer["text"])] == answer["text"]
        assert context.count(answer["text"]) == 1


def asked_entity(question):
    """The entity a question names, read back through the question templates."""
    for relation in RELATIONS:
        for template in relation.questions:
            match = re.fullmatch(re.escape(template).replace(re.escape("{s}"), "(.+)"), question)
            if match:
                return match.group(1)
    raise AssertionError(f"question {question!r} matches no template")


def test_answer_sentence_names_the_asked_entity(dataset):
    for context, qa in questions(dataset):
        start = qa["answers"][0]["answer_start"]
        sentence = context[context.rfind("。", 0, start) + 1 : context.index("。", start) + 1]
        assert asked_entity(qa["question"]) in sentence, (qa["question"], sentence)


def test_question_ids_unique_and_prefixed(dataset):
    ids = [qa["id"] for _, qa in questions(dataset)] + [qa["id"] for _, qa in questions(generate_squad(5, seed=4))]
    assert all(qid.startswith("SYN_") for qid in ids)
    assert len(ids) == len(set(ids))


def test_context_lengths_respect_bounds(dataset):
    lengths = [len(p["context"]) for p in paragraphs(dataset)]
    assert min(lengths) >= 600 and max(lengths) <= 1200
    short = generate_squad(10, seed=1, min_context_chars=300, max_context_chars=400)
    assert all(300 <= len(p["context"]) <= 400 for p in paragraphs(short))


def test_answers_are_spread_over_the_context(dataset):
    """Not a fixed offset: answer positions vary widely."""
    relative = [qa["answers"][0]["answer_start"] / len(context) for context, qa in questions(dataset)]
    thirds = Counter(min(int(3 * position), 2) for position in relative)
    assert all(thirds[third] > 0.2 * len(relative) for third in range(3)), thirds


def test_every_question_type_is_asked(dataset):
    """Several relations, several paraphrases: no template dominates."""
    endings = Counter(qa["question"][-4:] for _, qa in questions(dataset))
    assert len(endings) >= 15
    assert max(endings.values()) < 0.15 * sum(endings.values())


def share_beyond_first_window(tokenizer, data, max_length):
    pairs = questions(data)
    encoded = tokenizer(
        [qa["question"] for _, qa in pairs],
        [context for context, _ in pairs],
        truncation="only_second",
        max_length=max_length,
        return_offsets_mapping=True,
    )
    outside = 0
    for index, (_, qa) in enumerate(pairs):
        sequence_ids = encoded.sequence_ids(index)
        offsets = encoded["offset_mapping"][index]
        covered_chars = max(end for (_, end), seq in zip(offsets, sequence_ids) if seq == 1)
        answer = qa["answers"][0]
        outside += answer["answer_start"] + len(answer["text"]) > covered_chars
    return outside / len(pairs)


def test_a_good_share_of_answers_lies_beyond_the_first_512_tokens(offline_tokenizer, dataset):
    assert 0.2 <= share_beyond_first_window(offline_tokenizer, dataset, FIRST_WINDOW_TOKENS) <= 0.7


def test_demo_data_has_one_entity_per_kind_and_most_answers_beyond_128_tokens(offline_tokenizer):
    data = generate_squad(40, seed=5, **DEMO_DATA)
    kinds_per_article = len({relation.subject_kind for relation in RELATIONS})
    for context, qa in questions(data):
        assert 200 <= len(context) <= 400
        (answer,) = qa["answers"]
        assert context[answer["answer_start"] :].startswith(answer["text"]) and context.count(answer["text"]) == 1
    for paragraph in paragraphs(data):
        # every relation stated exactly once: one subject per kind, each with all its relations
        subjects = {asked_entity(qa["question"]) for qa in paragraph["qas"]}
        assert len(subjects) <= kinds_per_article
        assert paragraph["context"].count("出生") == 1 and paragraph["context"].count("总部") == 1
    assert 0.5 <= share_beyond_first_window(offline_tokenizer, data, 128) <= 0.9


def test_entities_per_kind_needs_room_for_its_facts():
    with pytest.raises(ValueError, match="max_context_chars=300 leaves no room"):
        generate_squad(5, min_context_chars=200, max_context_chars=300, entities_per_kind=2)
    with pytest.raises(ValueError, match="entities_per_kind"):
        generate_squad(1, entities_per_kind=0)


def test_fillers_fit_the_room_kept_for_them():
    longest_name = max(len(make(random.Random(seed))) for make in VALUE_MAKERS.values() for seed in range(50))
    longest_entity_filler = max(len(template.format(e="")) for template in ENTITY_FILLERS) + longest_name
    assert max(longest_entity_filler, *map(len, GENERIC_FILLERS)) <= FILLER_ROOM


def test_write_squad_round_trips_as_utf8_json(tmp_path):
    path = write_squad(tmp_path / "sub" / "train.json", 3, seed=7, questions_per_article=2)
    text = path.read_text(encoding="utf-8")
    assert "出" in text or "于" in text  # Chinese written as characters, not \\u escapes
    assert json.loads(text) == generate_squad(3, seed=7, questions_per_article=2)


@pytest.mark.parametrize(
    "arguments",
    [dict(num_articles=-1), dict(questions_per_article=0), dict(min_context_chars=100), dict(max_context_chars=610)],
)
def test_bad_arguments_raise_errors_naming_the_argument(arguments):
    (name,) = arguments
    with pytest.raises(ValueError, match=name):
        generate_squad(**(dict(num_articles=1) | arguments))
