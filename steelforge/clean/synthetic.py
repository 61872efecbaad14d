"""The embedded demo corpus: a small bilingual corpus generated from a seed, with labelled noise.

Real corpora cannot ship inside the package, yet the demo and the tests need text with two properties:
structure that a tiny model can learn within minutes, and dirt that a cleaning recipe must remove. So
everything here is composed from small character/syllable tables: invented cities, rivers and people
whose facts stay the same wherever they appear, arithmetic facts and word problems with their correct
answers (the working is written out, so it can be checked), question/answer pairs and short Python
functions. About a quarter of the documents carry one kind of noise (`NOISE_KINDS`), named in the
record's `noise` field so that a test can check what a recipe removed, converted or kept.

Same `(num_docs, seed)`, same corpus, byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

NOISE_KINDS: tuple[str, ...] = (
    "html",
    "email",
    "link",
    "ip",
    "traditional",
    "exact_dup",
    "near_dup",
    "spam",
    "too_short",
    "special_chars",
)

NOISE_DESCRIPTIONS: dict[str, str] = {
    "html": "a clean document wrapped in HTML tags, a script and a style block; a mapper strips them and the text survives",
    "email": "a clean document with an e-mail address inserted; a mapper removes the address",
    "link": "a clean document with a URL inserted; a mapper removes the link",
    "ip": "a clean document with an IPv4 address inserted; a mapper removes the address",
    "traditional": "a Chinese document in traditional characters; t2s conversion turns it back into simplified",
    "exact_dup": "a byte-identical copy of an earlier clean document; exact dedup drops it",
    "near_dup": "a copy of an earlier clean document with a few words changed; MinHash dedup drops it",
    "spam": "a few characters or words repeated many times; repetition filters drop it",
    "too_short": "a document of a few characters; the length filter drops it",
    "special_chars": "mostly symbols with little text; the special-character filter drops it",
}

NOISE_RATE = 0.25
"""Share of documents that carry noise (one kind each, chosen uniformly)."""

_SOURCE_WEIGHTS = (("synthetic-zh", 0.72), ("synthetic-en", 0.18), ("synthetic-code", 0.10))

# --- tables the entities are composed from -------------------------------------------------------
_ZH_SYLLABLES = "安宁平阳江川泉林青云石溪远华明清长和光河南北东西金银玉兰桃松柏春秋丰乐嘉兴永昌龙凤鹤鹿"
_ZH_SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕"
_ZH_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰文斌宇浩凯健俊帆鑫晨欣悦然"
_ZH_PRODUCTS = (
    "茶叶",
    "丝绸",
    "瓷器",
    "稻米",
    "柑橘",
    "铁器",
    "纸张",
    "药材",
    "竹编",
    "海盐",
    "葡萄",
    "木雕",
)
_ZH_PROFESSIONS = (
    "诗人",
    "画家",
    "医生",
    "工程师",
    "数学家",
    "天文学家",
    "农学家",
    "建筑师",
    "音乐家",
    "旅行家",
)
_ZH_WORKS = (
    "一部地方志",
    "一套历法",
    "一座石桥",
    "一种新稻种",
    "一部诗集",
    "一幅长卷",
    "一本算学书",
    "一份星图",
)
_ZH_OBJECTS = (  # (measure word, noun)
    ("个", "苹果"),
    ("支", "铅笔"),
    ("本", "书"),
    ("颗", "糖"),
    ("朵", "花"),
    ("只", "小鸟"),
    ("个", "橘子"),
    ("张", "邮票"),
    ("块", "积木"),
    ("条", "鱼"),
)
_ZH_KIDS = ("小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小宇")

_EN_ONSETS = ("br", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "th", "st")
_EN_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "o")
_EN_CODAS = ("n", "l", "r", "s", "th", "nd", "rk", "m", "dale", "ford", "wick", "ton")
_EN_PRODUCTS = ("tea", "silk", "pottery", "rice", "oranges", "iron tools", "paper", "wool", "salt", "wine")
_EN_PROFESSIONS = ("poet", "painter", "doctor", "engineer", "mathematician", "astronomer", "architect")
_EN_OBJECTS = ("apples", "pencils", "books", "marbles", "stamps", "cookies", "shells", "cards")
_EN_KIDS = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma")


@dataclass(frozen=True)
class City:
    zh: str
    en: str
    province_zh: str
    province_en: str
    population_wan: int  # in units of 10,000 people
    founded: int
    product: int  # index into the product tables
    river: int  # index into the world's rivers


@dataclass(frozen=True)
class River:
    zh: str
    en: str
    length_km: int
    source_mountain_zh: str
    source_mountain_en: str


@dataclass(frozen=True)
class Person:
    zh: str
    en: str
    born: int
    city: int  # index into the world's cities
    profession: int
    work: int


@dataclass(frozen=True)
class World:
    """Invented entities whose facts every document repeats consistently."""

    cities: tuple[City, ...]
    rivers: tuple[River, ...]
    people: tuple[Person, ...]


def _unique(rng: random.Random, make: Callable[[], str], taken: set[str]) -> str:
    while True:
        name = make()
        if name not in taken:
            taken.add(name)
            return name


def _zh_word(rng: random.Random, n: int = 2) -> str:
    return "".join(rng.choice(_ZH_SYLLABLES) for _ in range(n))


def _en_word(rng: random.Random, syllables: int = 2) -> str:
    parts = [rng.choice(_EN_ONSETS) + rng.choice(_EN_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_EN_CODAS)).capitalize()


def build_world(seed: int, num_docs: int) -> World:
    """The entities of one corpus, enough of them that descriptive documents need not repeat one."""
    num_cities, num_rivers, num_people = (
        max(100, num_docs // 5),
        max(40, num_docs // 10),
        max(100, num_docs // 8),
    )
    rng = random.Random(f"world-{seed}-{num_docs}")
    zh_taken: set[str] = set()
    en_taken: set[str] = set()
    provinces = [(_zh_word(rng) + "省", _en_word(rng) + " Province") for _ in range(12)]
    rivers = tuple(
        River(
            zh=_unique(rng, lambda: _zh_word(rng) + rng.choice("河江"), zh_taken),
            en=_unique(rng, lambda: "the " + _en_word(rng) + " River", en_taken),
            length_km=rng.randrange(80, 3000, 10),
            source_mountain_zh=_zh_word(rng) + "山",
            source_mountain_en="Mount " + _en_word(rng, 1),
        )
        for _ in range(num_rivers)
    )
    cities = []
    for _ in range(num_cities):
        province = rng.choice(provinces)
        cities.append(
            City(
                zh=_unique(rng, lambda: _zh_word(rng) + rng.choice("市城"), zh_taken),
                en=_unique(rng, lambda: _en_word(rng), en_taken),
                province_zh=province[0],
                province_en=province[1],
                population_wan=rng.randint(5, 900),
                founded=rng.randint(200, 1900),
                product=rng.randrange(len(_EN_PRODUCTS)),
                river=rng.randrange(num_rivers),
            )
        )
    people = tuple(
        Person(
            zh=_unique(
                rng,
                lambda: (
                    rng.choice(_ZH_SURNAMES)
                    + "".join(rng.choice(_ZH_GIVEN) for _ in range(rng.randint(1, 2)))
                ),
                zh_taken,
            ),
            en=_unique(rng, lambda: _en_word(rng) + " " + _en_word(rng, 1), en_taken),
            born=rng.randint(1000, 1990),
            city=rng.randrange(num_cities),
            profession=rng.randrange(len(_EN_PROFESSIONS)),
            work=rng.randrange(len(_ZH_WORKS)),
        )
        for _ in range(num_people)
    )
    return World(tuple(cities), rivers, people)


class Topics:
    """Which entity the next descriptive document is about: every entity once before any comes again.

    Two encyclopedic documents about the same entity would share most sentences and be near-duplicates
    that dedup removes, so clean documents walk the entities in a shuffled order instead of sampling them.
    """

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self._queues: dict[str, list[int]] = {}

    def next(self, kind: str, size: int) -> int:
        queue = self._queues.get(kind)
        if not queue:
            queue = list(range(size))
            self.rng.shuffle(queue)
            self._queues[kind] = queue
        return queue.pop()

    def city(self, lang: str) -> int:
        return self.next(f"{lang}-city", len(self.world.cities))

    def river(self) -> int:
        return self.next("river", len(self.world.rivers))

    def person(self) -> int:
        return self.next("person", len(self.world.people))


# --- clean documents --------------------------------------------------------------------------------
def _zh_city_sentences(world: World, city: City, rng: random.Random) -> tuple[list[str], dict[str, Any]]:
    """Sentence templates about `city` (one variant drawn per fact) and the facts they are filled with."""
    river = world.rivers[city.river]
    product = _ZH_PRODUCTS[city.product]
    return [
        rng.choice(("{c}是{p}的一座城市。", "{c}位于{p}。", "{c}是{p}境内的城市之一。")),
        rng.choice(("{c}的人口约为{n}万。", "据统计，{c}约有{n}万居民。")),
        rng.choice(("{c}建于公元{y}年。", "{c}始建于{y}年，历史悠久。")),
        rng.choice(("{r}从{c}城中流过。", "{c}坐落在{r}岸边。")),
        rng.choice(
            ("{c}以出产{g}闻名。", "{c}的特产是{g}。", "当地人以种植和制作{g}为生，{c}的{g}远近闻名。")
        ),
    ], dict(c=city.zh, p=city.province_zh, n=city.population_wan, y=city.founded, r=river.zh, g=product)


def _zh_encyclopedia(topics: Topics, rng: random.Random) -> str:
    world = topics.world
    kind = rng.random()
    if kind < 0.5:
        city = world.cities[topics.city("zh")]
        templates, facts = _zh_city_sentences(world, city, rng)
        rng.shuffle(templates)
        body = "".join(t.format(**facts) for t in templates)
        return f"{city.zh}\n{body}"
    if kind < 0.75:
        river_index = topics.river()
        river = world.rivers[river_index]
        towns = [c for c in world.cities if c.river == river_index]
        text = f"{river.zh}\n{river.zh}全长约{river.length_km}公里，发源于{river.source_mountain_zh}。"
        if towns:
            names = "、".join(c.zh for c in towns[:4])
            text += f"沿岸的城市有{names}。"
            text += (
                rng.choice(("两岸土地肥沃，", "河水清澈，", "每到春天，")) + f"{towns[0].zh}一带尤其热闹。"
            )
        else:
            text += "它流经的地区人烟稀少，两岸多是森林和草地。"
        return text
    person = world.people[topics.person()]
    city = world.cities[person.city]
    return (
        f"{person.zh}\n{person.zh}生于{person.born}年，是{city.zh}人，"
        f"一位著名的{_ZH_PROFESSIONS[person.profession]}。"
        f"{person.zh}一生最有名的成就是完成了{_ZH_WORKS[person.work]}。"
        + rng.choice(("后人常常提起{n}的故事。", "{c}至今保留着{n}的故居。", "{n}晚年回到{c}生活。")).format(
            n=person.zh, c=city.zh
        )
    )


def zh_word_problem(rng: random.Random) -> str:
    """One word problem with its worked answer, e.g. '小明有3个苹果，又买了5个，现在有几个？答：3+5=8，...'."""
    kid = rng.choice(_ZH_KIDS)
    unit, noun = rng.choice(_ZH_OBJECTS)
    op = rng.choice("+-×÷")
    if op == "+":
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return f"{kid}有{a}{unit}{noun}，又买了{b}{unit}，现在有几{unit}？答：{a}+{b}={a + b}，现在有{a + b}{unit}。"
    if op == "-":
        a = rng.randint(2, 60)
        b = rng.randint(1, a - 1)
        return f"{kid}有{a}{unit}{noun}，送给同学{b}{unit}，还剩几{unit}？答：{a}-{b}={a - b}，还剩{a - b}{unit}。"
    if op == "×":
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        return f"每个盒子里有{a}{unit}{noun}，{kid}有{b}个盒子，一共有几{unit}？答：{a}×{b}={a * b}，一共有{a * b}{unit}。"
    per, people = rng.randint(2, 9), rng.randint(2, 9)
    total = per * people
    return (
        f"{kid}把{total}{unit}{noun}平均分给{people}个人，每人分到几{unit}？"
        f"答：{total}÷{people}={per}，每人分到{per}{unit}。"
    )


def _zh_arithmetic(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(2, 4)):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op, word, value = rng.choice((("+", "加", a + b), ("×", "乘以", a * b)))
        lines.append(f"{a}{word}{b}等于{value}，写作{a}{op}{b}={value}。")
    lines.extend(zh_word_problem(rng) for _ in range(rng.randint(2, 4)))
    rng.shuffle(lines)
    return "\n".join(lines)


def _zh_qa(world: World, rng: random.Random) -> str:
    pairs = []
    for _ in range(rng.randint(3, 5)):
        city = rng.choice(world.cities)
        river = world.rivers[city.river]
        person = rng.choice(world.people)
        question, answer = rng.choice(
            (
                (f"{city.zh}位于哪个省？", f"{city.zh}位于{city.province_zh}。"),
                (f"{city.zh}有多少人口？", f"{city.zh}的人口约为{city.population_wan}万。"),
                (f"哪条河流经{city.zh}？", f"{river.zh}流经{city.zh}。"),
                (f"{city.zh}的特产是什么？", f"{city.zh}的特产是{_ZH_PRODUCTS[city.product]}。"),
                (f"{person.zh}是哪里人？", f"{person.zh}是{world.cities[person.city].zh}人。"),
                (f"{person.zh}是做什么的？", f"{person.zh}是一位{_ZH_PROFESSIONS[person.profession]}。"),
                (f"{river.zh}有多长？", f"{river.zh}全长约{river.length_km}公里。"),
            )
        )
        pairs.append(f"问：{question}\n答：{answer}")
    return "\n".join(pairs)


def en_word_problem(rng: random.Random) -> str:
    """One English word problem with its worked answer ('Answer: 3 + 5 = 8, ...')."""
    kid, obj = rng.choice(_EN_KIDS), rng.choice(_EN_OBJECTS)
    if rng.random() < 0.5:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        return (
            f"{kid} has {a} {obj} and gets {b} more. How many {obj} does {kid} have now? "
            f"Answer: {a} + {b} = {a + b}, so {kid} has {a + b} {obj}."
        )
    a = rng.randint(2, 60)
    b = rng.randint(1, a - 1)
    return (
        f"{kid} has {a} {obj} and gives away {b}. How many {obj} are left? "
        f"Answer: {a} - {b} = {a - b}, so {a - b} {obj} are left."
    )


def _en_document(topics: Topics, rng: random.Random) -> str:
    if rng.random() < 0.3:
        return "\n".join(en_word_problem(rng) for _ in range(rng.randint(3, 5)))
    world = topics.world
    city_index = topics.city("en")
    city = world.cities[city_index]
    river = world.rivers[city.river]
    people = [p for p in world.people if p.city == city_index]
    sentences = [
        f"{city.en} is a city in {city.province_en}.",
        rng.choice(
            (
                f"About {city.population_wan * 10_000:,} people live in {city.en}.",
                f"{city.en} has a population of roughly {city.population_wan * 10_000:,}.",
            )
        ),
        rng.choice(
            (f"It was founded in the year {city.founded}.", f"The city dates back to {city.founded}.")
        ),
        f"{river.en[0].upper() + river.en[1:]} flows through the city and rises on {river.source_mountain_en}.",
        rng.choice(
            (
                f"{city.en} is known for its {_EN_PRODUCTS[city.product]}.",
                f"Its markets are famous for {_EN_PRODUCTS[city.product]}.",
            )
        ),
    ]
    rng.shuffle(sentences)
    if people:
        person = people[0]
        sentences.append(
            f"The {_EN_PROFESSIONS[person.profession]} {person.en} was born there in {person.born}."
        )
    return f"{city.en}\n" + " ".join(sentences)


# Placeholders: {name} function, {arg} parameter, {v} loop variable, {acc} accumulator, {noun} for
# docstrings, {k}/{low}/{high}/{rate} constants; every one is drawn per function so documents differ.
_CODE_TEMPLATES: tuple[str, ...] = (
    'def {name}({arg}):\n    """Return the sum of the {noun} in {arg}."""\n    {acc} = 0\n'
    "    for {v} in {arg}:\n        {acc} += {v}\n    return {acc}",
    'def {name}(n):\n    """Return the factorial of n."""\n    {acc} = 1\n    for {v} in range(2, n + 1):\n'
    "        {acc} *= {v}\n    return {acc}",
    'def {name}({v}, low={low}, high={high}):\n    """Clamp {v} into [low, high]."""\n'
    "    return max(low, min({v}, high))",
    'def {name}({v}):\n    """Return True when {v} is a multiple of {k}."""\n    return {v} % {k} == 0',
    'def {name}({arg}):\n    """Count the vowels in {arg}."""\n'
    '    return sum(1 for {v} in {arg}.lower() if {v} in "aeiou")',
    'def {name}(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n'
    "        a, b = b, a + b\n    return a",
    'def {name}({arg}):\n    """Return the largest of the {noun}, or None when there are none."""\n'
    "    if not {arg}:\n        return None\n    {acc} = {arg}[0]\n    for {v} in {arg}[1:]:\n"
    "        if {v} > {acc}:\n            {acc} = {v}\n    return {acc}",
    'def {name}({v}, rate={rate}):\n    """Return the price of the {noun} after tax."""\n'
    "    return round({v} * (1 + rate), 2)",
    'def {name}({arg}, {v}):\n    """Return how many of the {noun} in {arg} are above {v}."""\n'
    "    return len([{acc} for {acc} in {arg} if {acc} > {v}])",
    'def {name}({arg}):\n    """Return the mean of the {noun}, or 0.0 for none."""\n'
    "    return sum({arg}) / len({arg}) if {arg} else 0.0",
)
_CODE_VERBS = ("compute", "get", "find", "count", "check", "total", "calc", "pick", "measure", "sum")
_CODE_NOUNS = (
    "scores",
    "prices",
    "items",
    "weights",
    "values",
    "points",
    "marks",
    "sizes",
    "ages",
    "heights",
)
_CODE_ARGS = ("values", "items", "data", "numbers", "xs", "seq", "entries", "records")
_CODE_VARS = ("value", "item", "x", "entry", "element", "number", "i", "current")
_CODE_ACCS = ("total", "result", "acc", "running", "best", "answer", "out", "tally")


def _code_document(rng: random.Random) -> str:
    functions = []
    for template in rng.sample(_CODE_TEMPLATES, rng.randint(2, 4)):
        noun = rng.choice(_CODE_NOUNS)
        low = rng.randint(-50, 0)
        functions.append(
            template.format(
                name=f"{rng.choice(_CODE_VERBS)}_{noun}_{rng.randint(1, 999)}",
                noun=noun,
                arg=rng.choice(_CODE_ARGS),
                v=rng.choice(_CODE_VARS),
                acc=rng.choice(_CODE_ACCS),
                low=low,
                high=low + rng.randint(1, 100),
                k=rng.randint(2, 9),
                rate=rng.choice((0.05, 0.08, 0.1, 0.13)),
            )
        )
    return "\n\n\n".join(functions)


def _clean_document(topics: Topics, source: str, rng: random.Random) -> str:
    if source == "synthetic-en":
        return _en_document(topics, rng)
    if source == "synthetic-code":
        return _code_document(rng)
    kind = rng.random()
    if kind < 0.45:
        return _zh_encyclopedia(topics, rng)
    if kind < 0.75:
        return _zh_arithmetic(rng)
    return _zh_qa(topics.world, rng)


# --- noise --------------------------------------------------------------------------------------------
@cache
def _s2t() -> Any:
    import opencc

    return opencc.OpenCC("s2t.json")


def _insert(text: str, snippet: str, rng: random.Random) -> str:
    """Put `snippet` at a sentence boundary of `text` (or at its end)."""
    cuts = [i + 1 for i, ch in enumerate(text) if ch in "。.\n"]
    at = rng.choice(cuts) if cuts else len(text)
    return text[:at] + snippet + text[at:]


def _domain(rng: random.Random) -> str:
    return _en_word(rng).lower() + rng.choice((".com", ".cn", ".org", ".net"))


def _html(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    paragraphs = "".join(f"<p>{line}</p>\n" for line in lines)
    return (
        f"<html><head><title>{lines[0][:20]}</title>\n"
        f"<style>body {{ margin: {rng.randint(0, 20)}px; }}</style>\n"
        f'<script type="text/javascript">var n = {rng.randint(1, 999)}; console.log(n);</script></head>\n'
        f'<body><div class="content">\n{paragraphs}</div></body></html>'
    )


_WORDS = re.compile(r"[\u4e00-\u9fff]|[A-Za-z]+|[^\u4e00-\u9fffA-Za-z]+")


def _near_copy(text: str, rng: random.Random) -> str:
    """`text` with one or two words (a Han character counts as one) replaced near its start or end.

    Edits at the edges touch the fewest n-gram shingles, so the copy stays a near-duplicate for
    MinHash at the usual thresholds even when the document is short.
    """
    pieces = _WORDS.findall(text)
    words = [i for i, piece in enumerate(pieces) if piece[0].isalpha()]
    edits = 1 if len(pieces) < 150 else 2
    for i in rng.sample(words[:2] + words[-1:], k=min(edits, len(words))):
        old = pieces[i]
        if "\u4e00" <= old <= "\u9fff":
            pieces[i] = rng.choice(_ZH_SYLLABLES.replace(old, ""))
        else:
            pieces[i] = rng.choice([w for w in ("very", "new", "old", "small", "great") if w != old])
    return "".join(pieces)


def _spam(rng: random.Random) -> str:
    unit = rng.choice(("哈", "赞", "好", "顶", "点击领取", "加微信", "免费送", "lol ", "buy now ", "666"))
    return unit * rng.randint(30, 80)


def _too_short(rng: random.Random) -> str:
    return rng.choice(("好的", "谢谢分享", "顶！", "收到。", "ok", "Thanks!", "沙发", "同上", "已阅", "+1"))


def _special_chars(rng: random.Random) -> str:
    symbols = "★☆※→←↑↓■□◆◇●○▲△♠♣♥♦§¶†‡©®™@#$%^&*~|"
    blocks = [
        "".join(rng.choice(symbols) for _ in range(rng.randint(8, 20))) for _ in range(rng.randint(4, 8))
    ]
    word = rng.choice(("优惠", "公告", "news", "热门", "推荐"))
    return word.join(blocks)


def _snippet(source: str, zh_label: str, en_label: str, value: str) -> str:
    """A labelled value set off by spaces, so that pattern mappers find its word boundaries."""
    if source == "synthetic-zh":
        return f"{zh_label}： {value} 。"
    return f" {en_label}: {value} "


def _noisy(kind: str, base: str, source: str, rng: random.Random) -> str:
    if kind == "html":
        return _html(base, rng)
    if kind == "email":
        user = _en_word(rng).lower() + str(rng.randint(1, 99))
        return _insert(base, _snippet(source, "联系邮箱", "Contact", f"{user}@{_domain(rng)}"), rng)
    if kind == "link":
        url = f"https://www.{_domain(rng)}/page/{rng.randint(1, 9999)}?ref=home"
        return _insert(base, _snippet(source, "详情见", "See", url), rng)
    if kind == "ip":
        address = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        return _insert(base, _snippet(source, "服务器地址", "Server", address), rng)
    if kind == "traditional":
        return _s2t().convert(base)
    if kind == "spam":
        return _spam(rng)
    if kind == "too_short":
        return _too_short(rng)
    if kind == "special_chars":
        return _special_chars(rng)
    raise ValueError(f"unknown noise kind {kind!r}")


def generate_documents(num_docs: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """`num_docs` records `{"id", "text", "source", "noise"}`; noise is a `NOISE_KINDS` label or None.

    Duplicates always follow the clean document they copy, so "keep the first" dedup keeps the original.
    """
    if num_docs < 0:
        raise ValueError(f"num_docs must be >= 0, not {num_docs}")
    rng = random.Random(f"docs-{seed}")
    topics = Topics(build_world(seed, num_docs), rng)
    seen: set[str] = set()
    sources = [name for name, _ in _SOURCE_WEIGHTS]
    weights = [weight for _, weight in _SOURCE_WEIGHTS]
    clean: list[dict[str, Any]] = []
    docs: list[dict[str, Any]] = []
    for index in range(num_docs):
        source = rng.choices(sources, weights)[0]
        noise = rng.choice(NOISE_KINDS) if rng.random() < NOISE_RATE else None
        if noise in ("exact_dup", "near_dup") and not clean:
            noise = None
        if noise == "traditional":
            source = "synthetic-zh"
        if noise == "exact_dup":
            original = rng.choice(clean)
            text, source = original["text"], original["source"]
        elif noise == "near_dup":
            original = rng.choice([d for d in clean[-300:] if len(d["text"]) >= 120] or clean)
            text, source = _near_copy(original["text"], rng), original["source"]
        else:
            text = _clean_document(topics, source, rng)
            while text in seen:  # clean documents are distinct, so every exact duplicate is labelled
                text = _clean_document(topics, source, rng)
            seen.add(text)
            if noise is not None:
                text = _noisy(noise, text, source, rng)
        record = {"id": f"syn-{seed}-{index:07d}", "text": text, "source": source, "noise": noise}
        docs.append(record)
        if noise is None:
            clean.append(record)
    return docs


def write_corpus(path: str | Path, num_docs: int = 2000, seed: int = 0) -> Path:
    """Write `generate_documents(num_docs, seed)` as JSON lines, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for record in generate_documents(num_docs, seed):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
