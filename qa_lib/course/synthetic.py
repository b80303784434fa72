"""The offline synthetic Chinese QA generator behind the demo (``make demo``).

Each article is a Chinese encyclopedia-style text about several made-up entities (people, companies,
cities, mountains, rivers). Every entity contributes fact sentences (出生于, 创立, 位于, 人口为, ...),
and generic filler sentences pad the text to 600-1200 characters, so that roughly 40 % of the
answers lie beyond the first 512-token window: truncation misses them, sliding windows find them.

What makes it learnable: a question repeats the entity name and the relation word of the sentence
that answers it ("张伟出生于哪一天？" / "……张伟出生于1987年3月12日。……"), so a model only has to find the
matching sentence and copy its slot. What keeps it from being trivial: every article holds several
entities of each kind, so the same relation and answer type occur several times (picking "a date"
is not enough), sentence order is random, and questions are paraphrased.

``entities_per_kind=1`` gives the easier variant the CPU demo trains on: one entity of each kind,
so each relation occurs once per article but answer types still repeat (a birth date and a
founding date, a home town and a headquarters city): the question's relation word decides. A
tiny randomly initialised BERT learns that within minutes on two CPU cores; telling apart several
people who share a relation (the default) takes it far longer (measurements in ``qa_lib.course.demo``).

Guarantees: all names in an article are distinct and none contains another; every answer occurs
exactly once in its context, at ``answer_start``; output depends only on the arguments
(``random.Random(seed)``, no global state).

Train/eval split: call ``generate_squad`` (or ``write_squad``) twice with different seeds, e.g.
seed 0 for training and seed 1 for evaluation. Ids contain the seed, so they never clash.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

VERSION = "synthetic-v1"
DEFAULT_QUESTIONS_PER_ARTICLE = 6
DEFAULT_MIN_CONTEXT_CHARS = 600
DEFAULT_MAX_CONTEXT_CHARS = 1200
# No filler sentence is longer than this (a test checks it); an article keeps this much room below its
# maximum length so that the last filler always fits.
FILLER_ROOM = 32
# Shorter contexts would hold little more than one entity block, hence no distractors.
MIN_CONTEXT_FLOOR = 200
# Draws per value before an article's pool of names counts as exhausted.
MAX_DRAWS = 1000
# Share of an article's characters that are fact sentences; the rest is filler. More facts mean more
# distractors per question, more filler means more text a model must learn to skip.
FACT_SHARE = 0.6

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高梁宋郑谢韩唐冯董程曹"
GIVEN_NAME_CHARS = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚英华玉兰文辉建国志红晨宇"
PLACE_FIRST_CHARS = "青云临安南东西清长永平新宁汉丰远兴嘉"
PLACE_SECOND_CHARS = "州阳川江源城山泉溪陵"
NATURE_FIRST_CHARS = "苍翠灵秀紫金白石凤龙虎玉碧赤"
NATURE_SECOND_CHARS = "云霞峰松岩霄屏峨"
ORG_BRANDS = "星海 华天 宏远 金光 明达 瑞丰 盛泰 恒信 新源 蓝鲸 青松 远航 博雅 鼎盛".split()
ORG_FIELDS = "科技 电子 食品 纺织 传媒 能源 生物 建筑 物流 医药".split()
ORG_KINDS = "公司 集团 有限公司".split()
UNIVERSITY_KINDS = "大学 师范大学 理工大学 医学院".split()
BOOK_FIRST_WORDS = "远方 故乡 星空 岁月 山河 春风 明月 长夜 归途 晨光".split()
BOOK_SECOND_WORDS = "回忆 故事 歌声 诗篇 旅程 梦想 守望 笔记".split()
PROVINCES = (
    "河北省 山西省 辽宁省 吉林省 江苏省 浙江省 安徽省 福建省 江西省 山东省 河南省 "
    "湖北省 湖南省 广东省 海南省 四川省 贵州省 云南省 陕西省 甘肃省 青海省"
).split()

GENERIC_FILLERS = (
    "这一地区自古以来就是重要的交通要道。",
    "近年来，当地政府加大了对基础设施的投入。",
    "许多学者对这段历史进行了深入研究。",
    "每年春季都有大量游客前来参观。",
    "当地的传统手工艺至今仍有传承。",
    "随着经济的发展，人们的生活水平不断提高。",
    "相关资料大多保存在档案馆中。",
    "这里的气候温和湿润，四季分明。",
    "上世纪末，这一带曾经历过一次大规模的改造。",
    "关于这一点，史料中的记载并不一致。",
    "此后的几十年里，情况发生了很大的变化。",
    "附近还有多处保存完好的古建筑。",
    "当地居民以农业和手工业为主要生计。",
    "每逢节日，街道上都会举行热闹的庆祝活动。",
    "该地区的教育事业也取得了长足进步。",
    "交通的改善带动了周边产业的发展。",
    "这些变化引起了社会各界的广泛关注。",
    "有关部门表示将继续推进相关工作。",
    "当地的饮食以清淡为主，特色小吃众多。",
    "不少年轻人选择留在家乡创业。",
    "这里的山水风光吸引了不少摄影爱好者。",
    "早在明清时期，这一带就已形成繁华的集市。",
    "当地的方言与周边地区略有不同。",
    "这些做法后来被其他地方广泛借鉴。",
    "据当地老人回忆，过去的生活十分艰苦。",
    "城区的老街保留着许多传统风貌。",
    "当地的茶叶和水果远近闻名。",
    "不少外地企业也在这里设立了办事处。",
    "有关这段经历的报道曾登上多家报纸。",
    "周边的村镇近年来也发生了明显的变化。",
)
# Chance that an entity filler comes before the next generic one.
ENTITY_FILLER_SHARE = 0.3
# Fillers that name an entity without stating a fact: distractors that share the entity but not the relation.
ENTITY_FILLERS = (
    "{e}的名字在当地几乎家喻户晓。",
    "人们常常提起{e}的故事。",
    "{e}的发展历程颇为曲折。",
    "关于{e}，坊间流传着许多说法。",
    "{e}近年来受到越来越多的关注。",
    "不少媒体曾专门报道过{e}。",
)


@dataclass(frozen=True)
class Relation:
    """A fact type: statement templates hold ``{s}`` (subject) and ``{o}`` (the answer), question
    templates hold ``{s}``. Both share the relation word so the question points at its sentence."""

    subject_kind: str
    object_kind: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]


RELATIONS = (
    Relation("person", "date", ("{s}出生于{o}。", "{s}于{o}出生在一个普通家庭。"),
             ("{s}出生于哪一天？", "{s}是什么时候出生的？", "{s}的出生日期是哪一天？")),
    Relation("person", "city", ("{s}的家乡是{o}。", "{s}的家乡在{o}，那里山清水秀。"),
             ("{s}的家乡是哪里？", "{s}的家乡在哪座城市？")),
    Relation("person", "university", ("{s}毕业于{o}。", "{s}多年前毕业于{o}。"),
             ("{s}毕业于哪所大学？", "{s}是从哪所学校毕业的？")),
    Relation("person", "book", ("{s}的代表作是《{o}》。", "《{o}》是{s}的代表作。"),
             ("{s}的代表作是哪本书？", "{s}的代表作叫什么？")),
    Relation("org", "person", ("{s}由{o}创立。", "{o}创立了{s}。"),
             ("{s}是谁创立的？", "谁创立了{s}？", "{s}的创立者是谁？")),
    Relation("org", "date", ("{s}成立于{o}。", "{s}于{o}正式成立。"),
             ("{s}成立于哪一天？", "{s}是什么时候成立的？")),
    Relation("org", "city", ("{s}的总部位于{o}。", "{s}的总部设在{o}。"),
             ("{s}的总部位于哪座城市？", "{s}的总部在哪里？")),
    Relation("org", "staff", ("{s}共有员工{o}。", "{s}目前的员工人数为{o}。"),
             ("{s}有多少员工？", "{s}的员工人数是多少？")),
    Relation("city", "population", ("{s}的人口为{o}。", "{s}现有人口约{o}。"),
             ("{s}的人口是多少？", "{s}有多少人口？")),
    Relation("city", "area", ("{s}的面积约为{o}。", "{s}总面积{o}，地形以平原为主。"),
             ("{s}的面积有多大？", "{s}的总面积是多少？")),
    Relation("city", "province", ("{s}位于{o}。", "{s}位于{o}的东部。"),
             ("{s}位于哪个省？", "{s}位于哪个省份？")),
    Relation("mountain", "height", ("{s}海拔{o}。", "{s}的主峰海拔{o}，常年云雾缭绕。"),
             ("{s}海拔多少米？", "{s}的海拔是多少？")),
    Relation("river", "length", ("{s}全长{o}。", "{s}全长{o}，沿岸土地肥沃。"),
             ("{s}全长多少公里？", "{s}全长有多少？")),
)  # fmt: skip
# How often each entity kind is drawn: people and companies carry the most varied facts.
ENTITY_KIND_WEIGHTS = {"person": 4, "org": 3, "city": 2, "mountain": 1, "river": 1}


@dataclass(frozen=True)
class Fact:
    """One rendered statement and where its answer sits inside it."""

    subject: str
    relation: Relation
    answer: str
    sentence: str
    answer_offset: int


class _ArticleNames:
    """Draws values for one article so that no value repeats and none contains another (a question
    about 王伟 must not also match 王伟明, and an answer must occur only once)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: list[str] = []

    def draw(self, make: Callable[[random.Random], str]) -> str:
        for _ in range(MAX_DRAWS):
            value = make(self.rng)
            if not any(value in old or old in value for old in self.used):
                self.used.append(value)
                return value
        raise ValueError(
            f"ran out of distinct values after {len(self.used)} in one article; use a smaller max_context_chars"
        )


def _person(rng: random.Random) -> str:
    given = "".join(rng.choice(GIVEN_NAME_CHARS) for _ in range(rng.choice((1, 2))))
    return rng.choice(SURNAMES) + given


def _place_stem(rng: random.Random) -> str:
    return rng.choice(PLACE_FIRST_CHARS) + rng.choice(PLACE_SECOND_CHARS)


def _nature_stem(rng: random.Random) -> str:
    return rng.choice(NATURE_FIRST_CHARS) + rng.choice(NATURE_SECOND_CHARS)


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1900, 2023)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日"


def _population(rng: random.Random) -> str:
    tens_of_thousands = rng.randint(5, 999) if rng.random() < 0.5 else rng.randint(50, 9999) / 10
    return f"{tens_of_thousands:g}万"


def _book(rng: random.Random) -> str:
    joiner = rng.choice(("", "的"))
    return rng.choice(BOOK_FIRST_WORDS) + joiner + rng.choice(BOOK_SECOND_WORDS)


VALUE_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "person": _person,
    "org": lambda rng: rng.choice(ORG_BRANDS) + rng.choice(ORG_FIELDS) + rng.choice(ORG_KINDS),
    "city": lambda rng: _place_stem(rng) + "市",
    "mountain": lambda rng: _nature_stem(rng) + "山",
    "river": lambda rng: _nature_stem(rng) + rng.choice(("河", "江")),
    "university": lambda rng: _place_stem(rng) + rng.choice(UNIVERSITY_KINDS),
    "book": _book,
    "province": lambda rng: rng.choice(PROVINCES),
    "date": _date,
    "staff": lambda rng: f"{rng.randint(30, 20000)}人",
    "population": _population,
    "area": lambda rng: f"{rng.randint(100, 20000)}平方公里",
    "height": lambda rng: f"{rng.randint(300, 6000)}米",
    "length": lambda rng: f"{rng.randint(50, 3000)}公里",
}


def _render_fact(subject: str, relation: Relation, names: _ArticleNames) -> Fact:
    answer = names.draw(VALUE_MAKERS[relation.object_kind])
    template = names.rng.choice(relation.statements)
    before_answer = template.split("{o}")[0].format(s=subject)
    sentence = template.format(s=subject, o=answer)
    return Fact(subject, relation, answer, sentence, len(before_answer))


def _entity_facts(kind: str, names: _ArticleNames) -> list[Fact]:
    subject = names.draw(VALUE_MAKERS[kind])
    facts = [_render_fact(subject, relation, names) for relation in RELATIONS if relation.subject_kind == kind]
    names.rng.shuffle(facts)
    return facts


def _draw_facts(rng: random.Random, names: _ArticleNames, fact_chars: int) -> list[Fact]:
    """Entity blocks (all facts of one entity, in random order) until ``fact_chars`` is reached."""
    kinds, weights = list(ENTITY_KIND_WEIGHTS), list(ENTITY_KIND_WEIGHTS.values())
    facts: list[Fact] = []
    while sum(len(fact.sentence) for fact in facts) < fact_chars:
        facts += _entity_facts(rng.choices(kinds, weights)[0], names)
    return facts


def _facts_per_kind(rng: random.Random, names: _ArticleNames, entities_per_kind: int) -> list[Fact]:
    """Entity blocks, ``entities_per_kind`` of every kind, in random order."""
    kinds = [kind for kind in ENTITY_KIND_WEIGHTS for _ in range(entities_per_kind)]
    rng.shuffle(kinds)
    return [fact for kind in kinds for fact in _entity_facts(kind, names)]


def _fillers(rng: random.Random, subjects: Sequence[str]) -> Iterator[str]:
    """Endless filler sentences. Generic ones come from a reshuffled deck, so that an article repeats
    one only after using them all; entity fillers are mixed in at random."""
    while True:
        for generic in rng.sample(GENERIC_FILLERS, len(GENERIC_FILLERS)):
            if rng.random() < ENTITY_FILLER_SHARE:
                yield rng.choice(ENTITY_FILLERS).format(e=rng.choice(subjects))
            yield generic


def _interleave_fillers(rng: random.Random, facts: list[Fact], target_chars: int) -> list[str | Fact]:
    """Insert filler sentences at random places until the text reaches ``target_chars``."""
    pieces: list[str | Fact] = list(facts)
    fillers = _fillers(rng, sorted({fact.subject for fact in facts}))
    length = sum(len(fact.sentence) for fact in facts)
    while length < target_chars:
        filler = next(fillers)
        pieces.insert(rng.randint(0, len(pieces)), filler)
        length += len(filler)
    return pieces


def _question(fact: Fact, rng: random.Random) -> str:
    return rng.choice(fact.relation.questions).format(s=fact.subject)


def _article_facts(
    rng: random.Random, names: _ArticleNames, min_chars: int, max_chars: int, entities_per_kind: int | None
) -> tuple[list[Fact], int]:
    """The article's facts and its target length in characters."""
    if entities_per_kind is None:
        target_chars = rng.randint(min_chars, max_chars - FILLER_ROOM)
        return _draw_facts(rng, names, int(target_chars * FACT_SHARE)), target_chars
    facts = _facts_per_kind(rng, names, entities_per_kind)
    fact_chars = sum(len(fact.sentence) for fact in facts)
    if fact_chars > max_chars - FILLER_ROOM:
        raise ValueError(
            f"max_context_chars={max_chars} leaves no room: entities_per_kind={entities_per_kind} gives "
            f"{fact_chars} characters of facts, plus {FILLER_ROOM} kept for a filler sentence"
        )
    return facts, rng.randint(max(min_chars, fact_chars), max_chars - FILLER_ROOM)


def _article(
    rng: random.Random,
    article_id: str,
    questions: int,
    min_chars: int,
    max_chars: int,
    entities_per_kind: int | None = None,
) -> dict:
    names = _ArticleNames(rng)
    facts, target_chars = _article_facts(rng, names, min_chars, max_chars, entities_per_kind)
    pieces = _interleave_fillers(rng, facts, target_chars)

    context, answer_starts = "", {}
    for piece in pieces:
        if isinstance(piece, Fact):
            answer_starts[piece] = len(context) + piece.answer_offset
            context += piece.sentence
        else:
            context += piece
    # Fillers repeat entity names, never answers; the check keeps the promise "each answer occurs once".
    askable = [fact for fact in facts if context.count(fact.answer) == 1]
    chosen = rng.sample(askable, min(questions, len(askable)))
    qas = [
        {
            "id": f"{article_id}_Q{number:02d}",
            "question": _question(fact, rng),
            "answers": [{"text": fact.answer, "answer_start": answer_starts[fact]}],
        }
        for number, fact in enumerate(chosen)
    ]
    return {"title": facts[0].subject, "paragraphs": [{"id": article_id, "context": context, "qas": qas}]}


def _check_arguments(
    num_articles: int, questions_per_article: int, min_chars: int, max_chars: int, entities_per_kind: int | None
) -> None:
    if entities_per_kind is not None and entities_per_kind < 1:
        raise ValueError(f"entities_per_kind must be None or >= 1, got {entities_per_kind}")
    if num_articles < 0:
        raise ValueError(f"num_articles must be >= 0, got {num_articles}")
    if questions_per_article < 1:
        raise ValueError(f"questions_per_article must be >= 1, got {questions_per_article}")
    if min_chars < MIN_CONTEXT_FLOOR or max_chars < min_chars + FILLER_ROOM:
        raise ValueError(
            f"need min_context_chars >= {MIN_CONTEXT_FLOOR} and max_context_chars >= min_context_chars + "
            f"{FILLER_ROOM} (room for the last filler sentence), got min={min_chars}, max={max_chars}"
        )


def generate_squad(
    num_articles: int,
    questions_per_article: int = DEFAULT_QUESTIONS_PER_ARTICLE,
    seed: int = 0,
    min_context_chars: int = DEFAULT_MIN_CONTEXT_CHARS,
    max_context_chars: int = DEFAULT_MAX_CONTEXT_CHARS,
    entities_per_kind: int | None = None,
) -> dict:
    """A SQuAD v1 dataset of ``num_articles`` synthetic Chinese articles, one paragraph each.

    Context lengths fall in [min_context_chars, max_context_chars], roughly uniformly. Each paragraph gets
    ``questions_per_article`` questions about distinct facts, fewer only if it states fewer facts (a
    600-character article states about 20). Ids look like ``SYN_<seed>_<article>_Q<n>``.
    ``entities_per_kind``: None fills 60% of each article with facts about as many entities as fit;
    a number gives exactly that many entities of every kind (13 facts, about 210 characters, per one).
    The same arguments always give the same dataset; use another seed for a held-out set."""
    _check_arguments(num_articles, questions_per_article, min_context_chars, max_context_chars, entities_per_kind)
    rng = random.Random(seed)
    articles = [
        _article(
            rng,
            f"SYN_{seed}_{index:05d}",
            questions_per_article,
            min_context_chars,
            max_context_chars,
            entities_per_kind,
        )
        for index in range(num_articles)
    ]
    return {"version": VERSION, "data": articles}


def write_squad(path: str | os.PathLike, num_articles: int, seed: int = 0, **options) -> Path:
    """Generate a dataset (``options`` as in ``generate_squad``) and write it as UTF-8 JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = generate_squad(num_articles, seed=seed, **options)
    path.write_text(json.dumps(dataset, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
