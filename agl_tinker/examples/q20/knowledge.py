"""The closed world of the offline 20 Questions game: every secret and what is true of it.

The offline answerer and the offline search tool both read this one table, so a search result can
never contradict an answer. The world is closed on purpose: an attribute a secret does not list is
false for it, which keeps answers deterministic and makes "yes" mean something a policy can use.

Questions are read as *terms*: words folded to a known singular (``elephants`` -> ``elephant``),
with articles dropped and a few phrases and synonyms mapped to one attribute (``man-made`` ->
``manmade``, ``bigger than a car`` -> ``huge``). An entity's name is a term too; a name is listed
as another entity's attribute only where "Is it a <name>?" is true of it (an owl is a bird).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

CATEGORIES = ("animal", "object", "food", "place", "profession", "instrument")

# name -> (category, attributes in the order search shows them). Implied attributes are added below.
_TABLE: dict[str, tuple[str, str]] = {
    # animals
    "dog": ("animal", "mammal pet domestic legs fur tail bark loyal"),
    "cat": ("animal", "mammal pet domestic small legs fur tail whiskers"),
    "bird": ("animal", "feathers wings fly beak legs small nest"),
    "fish": ("animal", "water swim fins scales gills small"),
    "elephant": ("animal", "mammal huge grey land trunk tusks africa asia wild legs herbivore"),
    "horse": ("animal", "mammal large legs hooves mane ride farm domestic herbivore fast"),
    "lion": ("animal", "mammal large legs fur mane wild africa predator carnivore"),
    "tiger": ("animal", "mammal large legs fur stripes orange wild asia predator carnivore"),
    "cow": ("animal", "mammal large legs hooves farm milk domestic herbivore spots"),
    "rabbit": ("animal", "mammal small legs fur ears hop pet herbivore"),
    "giraffe": ("animal", "mammal huge legs tall neck spots africa wild herbivore"),
    "penguin": ("animal", "bird wings feathers beak swim water cold antarctica legs"),
    "snake": ("animal", "reptile scales long venom wild"),
    "monkey": ("animal", "mammal legs tail climb jungle wild"),
    "shark": ("animal", "fish large water ocean swim fins teeth predator wild"),
    "owl": ("animal", "bird wings feathers beak fly night predator wild legs"),
    # objects
    "car": ("object", "manmade large metal wheels engine vehicle transport road outdoor"),
    "chair": ("object", "manmade large furniture legs sit wooden indoor everyday"),
    "table": ("object", "manmade large furniture legs flat wooden indoor everyday"),
    "book": ("object", "manmade small paper pages read indoor"),
    "phone": ("object", "manmade small electronic screen call portable battery everyday"),
    "computer": ("object", "manmade electronic screen keyboard indoor everyday"),
    "ball": ("object", "manmade small round toy sport bounce"),
    "cup": ("object", "manmade small drink indoor everyday"),
    "bicycle": ("object", "manmade large metal wheels pedals ride vehicle transport outdoor"),
    "lamp": ("object", "manmade electronic light indoor"),
    "clock": ("object", "manmade time wall indoor everyday"),
    "umbrella": ("object", "manmade rain portable outdoor"),
    "spoon": ("object", "manmade small metal cutlery indoor everyday"),
    "key": ("object", "manmade small metal lock portable everyday"),
    "camera": ("object", "manmade small electronic photos lens portable"),
    "television": ("object", "manmade large electronic screen indoor"),
    "pen": ("object", "manmade small write ink portable everyday"),
    "pencil": ("object", "manmade small wooden write portable"),
    "shoe": ("object", "manmade small wear feet leather everyday"),
    "hat": ("object", "manmade small wear head"),
    "watch": ("object", "manmade small time wear portable everyday"),
    "bottle": ("object", "manmade small drink glass plastic"),
    "window": ("object", "manmade glass wall indoor"),
    "door": ("object", "manmade large wooden wall indoor everyday"),
    "bed": ("object", "manmade large furniture sleep indoor"),
    "boat": ("object", "manmade large water float vehicle transport outdoor"),
    "airplane": ("object", "manmade huge metal wings fly engine vehicle transport"),
    "train": ("object", "manmade huge metal wheels engine vehicle transport rails"),
    # food
    "apple": ("food", "fruit red round sweet crunchy"),
    "banana": ("food", "fruit yellow long sweet tropical"),
    "orange": ("food", "fruit orange round citrus sweet juice"),
    "pizza": ("food", "baked hot italian dough slices"),
    "bread": ("food", "baked wheat dough bakery"),
    "cheese": ("food", "dairy milk yellow"),
    "carrot": ("food", "vegetable orange long root"),
    "rice": ("food", "grain white small asia"),
    "egg": ("food", "white oval shell breakfast"),
    "tomato": ("food", "fruit red round juicy"),
    "chocolate": ("food", "sweet brown dessert cocoa"),
    "honey": ("food", "sweet sticky yellow bees liquid"),
    "ice cream": ("food", "sweet cold frozen dessert dairy milk"),
    # places
    "house": ("place", "manmade building huge home rooms roof family"),
    "school": ("place", "manmade building huge students learn classroom children"),
    "hospital": ("place", "manmade building huge patients medicine sick"),
    "beach": ("place", "natural outdoor huge sand sea water sun"),
    "library": ("place", "manmade building huge reading quiet borrow"),
    "airport": ("place", "manmade huge planes flights travel runway"),
    "desert": ("place", "natural outdoor huge sand hot dry"),
    "mountain": ("place", "natural outdoor huge tall rock snow"),
    "museum": ("place", "manmade building huge art history exhibits"),
    "forest": ("place", "natural outdoor huge trees wild"),
    "kitchen": ("place", "manmade room large cook indoor"),
    # professions
    "doctor": ("profession", "medicine patients sick health"),
    "teacher": ("profession", "students classroom learn education"),
    "pilot": ("profession", "fly planes aviation uniform travel"),
    "chef": ("profession", "cook restaurant meals"),
    "farmer": ("profession", "farm crops outdoor tractor harvest"),
    "nurse": ("profession", "medicine patients health care"),
    "firefighter": ("profession", "fire rescue uniform brave"),
    "lawyer": ("profession", "law court legal"),
    "dentist": ("profession", "teeth health medicine"),
    "astronaut": ("profession", "space rocket fly uniform"),
    # instruments
    "guitar": ("instrument", "strings wooden pluck large"),
    "piano": ("instrument", "keyboard large strings wooden indoor"),
    "violin": ("instrument", "strings wooden bow small orchestra"),
    "drum": ("instrument", "percussion hit loud beat"),
    "flute": ("instrument", "wind blow small metal orchestra"),
    "trumpet": ("instrument", "brass wind blow metal loud"),
    "harp": ("instrument", "strings pluck large orchestra"),
    "saxophone": ("instrument", "brass wind blow metal jazz"),
    "cello": ("instrument", "strings bow wooden large orchestra"),
    "accordion": ("instrument", "keyboard bellows squeeze portable"),
}

# What a category or attribute implies, so common generic questions get true answers.
_IMPLIES: dict[str, tuple[str, ...]] = {
    "animal": ("living",),
    "food": ("edible",),
    "profession": ("person", "living", "legs", "job"),
    "instrument": ("manmade", "music", "musical"),
    "huge": ("large",),
    "building": ("manmade",),
}

# Phrases and synonyms -> one attribute term. Keys are article-free, already-folded word tuples.
_ALIASES: dict[tuple[str, ...], str] = {
    ("man", "made"): "manmade",
    ("made", "by", "humans"): "manmade",
    ("artificial",): "manmade",
    ("alive",): "living",
    ("living", "thing"): "living",
    ("eat",): "edible",
    ("eaten",): "edible",
    ("eatable",): "edible",
    ("every", "day"): "everyday",
    ("daily",): "everyday",
    ("indoors",): "indoor",
    ("inside",): "indoor",
    ("outdoors",): "outdoor",
    ("outside",): "outdoor",
    ("bigger", "than", "car"): "huge",
    ("larger", "than", "car"): "huge",
    ("bigger", "than", "breadbox"): "large",
    ("larger", "than", "breadbox"): "large",
    ("big",): "large",
    ("giant",): "huge",
    ("enormous",): "huge",
    ("little",): "small",
    ("tiny",): "small",
    ("gray",): "grey",
    ("wood",): "wooden",
    ("human",): "person",
    ("people",): "person",
    ("occupation",): "job",
    ("tv",): "television",
    ("bike",): "bicycle",
    ("fruits",): "fruit",
    ("electric",): "electronic",
    ("electricity",): "electronic",
}

_ARTICLES = frozenset({"a", "an", "the"})
_WORD = re.compile(r"[a-z0-9]+")
_MAX_PHRASE = 3


@dataclass(frozen=True)
class Entity:
    """One possible secret: its name, category, and every attribute true of it."""

    name: str
    category: str
    shown: tuple[str, ...]
    """Attributes as listed in the table (what search shows), category excluded."""
    attributes: frozenset[str]
    """Everything true of it: ``shown``, its category and what those imply."""

    def describe(self) -> str:
        """One search-result line, e.g. ``elephant (animal): mammal, huge, grey, ...``."""
        return f"{self.name} ({self.category}): {', '.join(self.shown)}"


def implied(seeds: Iterable[str]) -> frozenset[str]:
    """``seeds`` with everything they imply (``animal`` -> ``living``), transitively."""
    out: set[str] = set()
    todo = list(seeds)
    while todo:
        term = todo.pop()
        if term not in out:
            out.add(term)
            todo.extend(_IMPLIES.get(term, ()))
    return frozenset(out)


def _build(table: Mapping[str, tuple[str, str]]) -> dict[str, Entity]:
    entities: dict[str, Entity] = {}
    for name, (category, attrs) in table.items():
        if category not in CATEGORIES:
            raise ValueError(f"knowledge entry {name!r} has unknown category {category!r}")
        shown = tuple(attrs.split())
        entities[name] = Entity(name, category, shown, implied((category, *shown)))
    return entities


ENTITIES: dict[str, Entity] = _build(_TABLE)


@cache
def _term_words() -> frozenset[str]:
    """Words that are a term on their own: attributes, categories, alias targets, one-word names."""
    words: set[str] = set(CATEGORIES) | set(_ALIASES.values())
    for entity in ENTITIES.values():
        words |= entity.attributes
        words.add(entity.name)
    return frozenset(words)


@cache
def _vocabulary() -> frozenset[str]:
    """Every word plurals fold to: term words plus the words of names and alias phrases."""
    words = set(_term_words())
    for phrase in (*_ALIASES, *(tuple(name.split()) for name in ENTITIES)):
        words.update(phrase)
    return frozenset(words)


@cache
def _phrases() -> dict[tuple[str, ...], str]:
    """Multi- and single-word phrases -> term: entity names (as themselves) and aliases."""
    phrases = {tuple(name.split()): name for name in ENTITIES}
    phrases.update(_ALIASES)
    return phrases


def fold(word: str) -> str:
    """A word in the form the world knows it: ``boxes`` -> ``box``, ``stripe`` -> ``stripes``.

    Only folds to a known word, so unknown words pass through unchanged.
    """
    vocab = _vocabulary()
    if word in vocab:
        return word
    candidates = []
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s"):
        candidates.append(word[:-1])
    candidates += [word + "s", word + "es"]
    return next((c for c in candidates if c in vocab), word)


def terms(text: str) -> list[str]:
    """The known terms of ``text`` in order: names, attributes and aliases, longest phrase first.

    Words the world does not know are dropped, so "Is it found indoors?" reads as ``["indoor"]``.
    """
    words = [fold(w) for w in _WORD.findall(text.lower().replace("'s", "")) if w not in _ARTICLES]
    phrases, singles = _phrases(), _term_words()
    out: list[str] = []
    i = 0
    while i < len(words):
        for size in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
            phrase = tuple(words[i : i + size])
            if phrase in phrases:
                out.append(phrases[phrase])
                i += size
                break
        else:
            if words[i] in singles:
                out.append(words[i])
            i += 1
    return out


def entity(name: str) -> Entity:
    """The entity called ``name`` (case and surrounding space ignored); ``KeyError`` names it if absent."""
    key = " ".join(name.lower().split())
    try:
        return ENTITIES[key]
    except KeyError:
        raise KeyError(f"{name!r} is not in the 20 Questions knowledge table") from None
