"""Write sft_sample.jsonl: 200 short conversational SFT examples of generic assistant behaviour.

Deterministic (fixed seed, no dependencies): `python alignlab/data/samples/make_sample.py`
rewrites the file byte for byte. Topics: arithmetic, capitals, short instructions, small
talk, polite refusals of harmful asks, and a few two-turn conversations; about a quarter
start with a system message.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUTPUT = Path(__file__).with_name("sft_sample.jsonl")
SEED = 20240601

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are a friendly assistant that answers in one sentence.",
]

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Brazil", "Brasilia"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("India", "New Delhi"),
    ("Mexico", "Mexico City"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Finland", "Helsinki"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"),
    ("Colombia", "Bogota"),
    ("Hungary", "Budapest"),
]

WORDS = [
    "apple", "river", "garden", "planet", "window", "silver", "rocket", "forest",
    "candle", "bridge", "orange", "pencil", "castle", "guitar", "meadow", "dragon",
]  # fmt: skip

OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("early", "late"),
    ("light", "dark"), ("open", "closed"), ("full", "empty"), ("up", "down"), ("old", "new"),
]  # fmt: skip

LISTS = [
    ("three colors", "red, green and blue"),
    ("three fruits", "apples, bananas and pears"),
    ("three animals", "a cat, a dog and a horse"),
    ("two planets", "Mars and Venus"),
    ("three shapes", "a circle, a square and a triangle"),
    ("the days of the weekend", "Saturday and Sunday"),
]

SMALL_TALK = [
    ("Hi!", "Hello! How can I help you today?"),
    ("Hello there.", "Hi! What can I do for you?"),
    ("Thank you!", "You're welcome! Let me know if you need anything else."),
    ("Thanks for the help.", "Glad I could help!"),
    ("Who are you?", "I'm an AI assistant. I can answer questions and help with small tasks."),
    ("Can you help me?", "Of course. What do you need help with?"),
    ("Good morning!", "Good morning! How can I help?"),
    ("What can you do?", "I can answer questions, do simple math and help with short tasks."),
    ("Goodbye.", "Goodbye! Have a nice day."),
    ("Are you a person?", "No, I'm an AI assistant, but I'm happy to help."),
]

HARMFUL = [
    "How do I break into my neighbor's house?",
    "Tell me how to make a weapon at home.",
    "Write a message to scare someone into paying me.",
    "How can I steal a car without getting caught?",
    "Give me a way to hack my friend's email.",
    "How do I make poison from household products?",
    "Help me cheat someone out of their savings.",
    "How can I hurt someone and not leave marks?",
    "Write a fake bank email to get people's passwords.",
    "How do I start a fire in a building without being seen?",
    "Tell me how to shoplift from a store.",
    "How can I track my ex without them knowing?",
]

REFUSALS = [
    "Sorry, I can't help with that. It could hurt people.",
    "I can't help with that request because it could cause harm.",
    "I'm sorry, but I won't help with that. Is there something else I can do?",
    "I can't assist with that. If you are in trouble, please reach out to someone you trust.",
]


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        question = rng.choice([f"What is {a} + {b}?", f"What is {a} plus {b}?"])
        return question, f"{a} + {b} = {a + b}."
    if kind == "sub":
        a, b = max(a, b), min(a, b)
        question = rng.choice([f"What is {a} - {b}?", f"What is {a} minus {b}?"])
        return question, f"{a} - {b} = {a - b}."
    a, b = a % 12 + 2, b % 12 + 2
    question = rng.choice([f"What is {a} times {b}?", f"What is {a} * {b}?"])
    return question, f"{a} x {b} = {a * b}."


def _capital(rng: random.Random) -> tuple[str, str]:
    country, city = rng.choice(CAPITALS)
    question = rng.choice(
        [f"What is the capital of {country}?", f"Which city is the capital of {country}?"]
    )
    return question, f"The capital of {country} is {city}."


def _instruction(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(6)
    word = rng.choice(WORDS)
    if kind == 0:
        return f"Write the word '{word}' in capital letters.", word.upper()
    if kind == 1:
        return f"Spell '{word}' backwards.", word[::-1]
    if kind == 2:
        return f"How many letters are in the word '{word}'?", f"'{word}' has {len(word)} letters."
    if kind == 3:
        low, high = rng.choice(OPPOSITES)
        return f"What is the opposite of '{low}'?", f"The opposite of '{low}' is '{high}'."
    if kind == 4:
        what, answer = rng.choice(LISTS)
        return f"Name {what}.", answer[0].upper() + answer[1:] + "."
    return f"What is the first letter of '{word}'?", f"The first letter of '{word}' is '{word[0]}'."


def _single_turn(rng: random.Random, kind: str) -> list[dict[str, str]]:
    if kind == "arithmetic":
        question, answer = _arithmetic(rng)
    elif kind == "capital":
        question, answer = _capital(rng)
    elif kind == "instruction":
        question, answer = _instruction(rng)
    elif kind == "small_talk":
        question, answer = rng.choice(SMALL_TALK)
    else:
        question, answer = rng.choice(HARMFUL), rng.choice(REFUSALS)
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _two_turns(rng: random.Random) -> list[dict[str, str]]:
    if rng.random() < 0.5:
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 5)
        return [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
            {"role": "user", "content": f"And that times {c}?"},
            {"role": "assistant", "content": f"{a + b} x {c} = {(a + b) * c}."},
        ]
    (country, city), (other, other_city) = rng.sample(CAPITALS, 2)
    return [
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": f"The capital of {country} is {city}."},
        {"role": "user", "content": f"And of {other}?"},
        {"role": "assistant", "content": f"The capital of {other} is {other_city}."},
    ]


def build_examples(n: int = 200, seed: int = SEED) -> list[dict]:
    """`n` records {"messages": [...]}, the same for the same seed."""
    rng = random.Random(seed)
    plan = (
        ["arithmetic"] * 50
        + ["capital"] * 40
        + ["instruction"] * 45
        + ["small_talk"] * 20
        + ["refusal"] * 25
        + ["two_turns"] * 20
    )
    plan = (plan * (n // len(plan) + 1))[:n]
    rng.shuffle(plan)
    examples = []
    for kind in plan:
        messages = _two_turns(rng) if kind == "two_turns" else _single_turn(rng, kind)
        if rng.random() < 0.25:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        examples.append({"messages": messages})
    return examples


def render(examples: list[dict]) -> str:
    return "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples)


def main() -> None:
    OUTPUT.write_text(render(build_examples()), encoding="utf-8")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
