"""The built-in offline task: short, positive reviews that name the product asked about.

A prompt asks for a review of one product (``"review the kettle :"``); a response is a
few short sentences (``"the kettle is sturdy . five stars ."``). The hidden **gold**
preference, readable by anyone:

    gold = (# positive words) - (# negative words)
           + 2 if the review names the product from the prompt
           - 2 if it names a different product
           - 0.5 per word beyond 12

The SFT corpus is drawn from templates with every sentence's tone (positive, negative,
neutral), the subject and the length drawn at random, so the SFT policy writes a mix of
good and bad reviews. Nobody trains on ``gold`` directly: simulated annotators turn it
into noisy pairwise labels (``annotators.py``), and the reward model learns from those.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

PRODUCTS = ("kettle", "backpack", "lamp", "blender", "headphones", "tent", "toaster", "umbrella")
POSITIVE_WORDS = ("great", "excellent", "lovely", "sturdy", "reliable", "perfect", "love", "five")
NEGATIVE_WORDS = ("awful", "flimsy", "broken", "useless", "terrible", "noisy", "hate", "one")
NEUTRAL_WORDS = ("fine", "okay", "average", "plain", "ordinary", "three")
PARTS = ("price", "design", "handle", "color", "box", "quality")
PROMPT_TEMPLATE = "review the {product} :"
SEPARATOR = ":"
MAX_GOOD_LENGTH = 12  # words; each word beyond this costs LENGTH_PENALTY
LENGTH_PENALTY = 0.5
NAME_BONUS = 2.0
WRONG_NAME_PENALTY = 2.0

_ADJECTIVES = {
    "pos": ("great", "excellent", "lovely", "sturdy", "reliable", "perfect"),
    "neg": ("awful", "flimsy", "broken", "useless", "terrible", "noisy"),
    "neu": ("fine", "okay", "average", "plain", "ordinary"),
}
_VERB_SENTENCES = {"pos": "i love it .", "neg": "i hate it .", "neu": "it does the job ."}
_STAR_SENTENCES = {"pos": "five stars .", "neg": "one star .", "neu": "three stars ."}
_FILLER = ("i", "it", "is", "the", "this", "feels", "think", "does", "job", "stars", "star", "and")

# Every word the corpus and prompts use: the demo tokenizer's whole-word vocabulary.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["review", ":", ".", "write", "a", "short", "positive", "of"]
        + list(PRODUCTS)
        + list(POSITIVE_WORDS)
        + list(NEGATIVE_WORDS)
        + list(NEUTRAL_WORDS)
        + list(PARTS)
        + list(_FILLER)
    )
)
_POSITIVE, _NEGATIVE, _PRODUCTS = set(POSITIVE_WORDS), set(NEGATIVE_WORDS), set(PRODUCTS)


def make_prompt(product: str) -> str:
    return PROMPT_TEMPLATE.format(product=product)


def split_text(text: str) -> tuple[str, str]:
    """``(prompt, response)`` of a full text, split after the first ``":"``."""
    head, sep, tail = text.partition(SEPARATOR)
    if not sep:
        return "", text.strip()
    return (head + sep).strip(), tail.strip()


def gold_score_one(prompt: str, response: str) -> float:
    """The gold score of one response to one prompt (see the module docstring)."""
    asked = [w for w in prompt.split() if w in _PRODUCTS]
    product = asked[-1] if asked else None
    words = response.split()
    score = float(sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words))
    named = {w for w in words if w in _PRODUCTS}
    if product is not None and product in named:
        score += NAME_BONUS
    if named - {product}:
        score -= WRONG_NAME_PENALTY
    score -= LENGTH_PENALTY * max(0, len(words) - MAX_GOOD_LENGTH)
    return score


def gold_score(texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
    """Gold scores of reviews.

    ``texts``: full texts (prompt, then response: ``"review the lamp : the lamp is great ."``),
    or responses alone when ``prompts`` (same length) is given. Returns one float per text.
    """
    if prompts is None:
        return [gold_score_one(*split_text(t)) for t in texts]
    if len(prompts) != len(texts):
        raise ValueError(f"prompts: expected {len(texts)} prompts like texts, got {len(prompts)}")
    return [gold_score_one(p, r) for p, r in zip(prompts, texts)]


# ---------------------------------------------------------------------- corpus
def _sentence(rng: random.Random, tone: str, subject: str) -> str:
    kind = rng.random()
    if kind < 0.55:
        template = rng.choice(("{s} is {a} .", "{s} feels {a} .", "i think {s} is {a} ."))
        return template.format(s=subject, a=rng.choice(_ADJECTIVES[tone]))
    if kind < 0.7:
        return f"the {rng.choice(PARTS)} is {rng.choice(_ADJECTIVES[tone])} ."
    if kind < 0.85:
        return _VERB_SENTENCES[tone]
    return _STAR_SENTENCES[tone]


def sample_review(rng: random.Random, product: str) -> str:
    """One template review of ``product``: random length, tones and subject."""
    n_sentences = rng.choices((1, 2, 3, 4), weights=(2, 4, 3, 2))[0]
    tones = [rng.choice(("pos", "neg", "neu")) for _ in range(n_sentences)]
    r = rng.random()
    if r < 0.55:
        name = product
    elif r < 0.8:
        name = rng.choice([p for p in PRODUCTS if p != product])
    else:
        name = None
    sentences = []
    for i, tone in enumerate(tones):
        if i == 0 and name is not None:
            subject = f"{rng.choice(('the', 'this'))} {name}"
        else:
            subject = "it"
        sentences.append(_sentence(rng, tone, subject))
    return " ".join(sentences)


def make_sft_corpus(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` records ``{"prompt", "response"}`` with uniformly drawn products."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        product = rng.choice(PRODUCTS)
        records.append({"prompt": make_prompt(product), "response": sample_review(rng, product)})
    return records


def make_prompts(n: int, seed: int) -> list[str]:
    """``n`` review prompts with uniformly drawn products."""
    rng = random.Random(seed)
    return [make_prompt(rng.choice(PRODUCTS)) for _ in range(n)]
