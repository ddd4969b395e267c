"""Data rows for the OOLONG-style families: dated questions by users, each with a
hidden TREC-coarse label. Question texts are drawn from per-label template banks,
so every row's label is known exactly; the context never states it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

LABELS = ("numeric value", "entity", "human being", "location",
          "description and abstract concept", "abbreviation")
# Skewed like real question logs, so most / least frequent labels are meaningful.
WEIGHTS = (0.16, 0.22, 0.17, 0.12, 0.26, 0.07)

_PLACES = ("Denver", "the Nile", "Lake Baikal", "Kyoto", "Patagonia", "the Alps", "Lisbon",
           "Mount Kenya", "Quebec", "the Sahara", "Bruges", "Tasmania")
_THINGS = ("the telephone", "penicillin", "the printing press", "jazz", "the bicycle",
           "photosynthesis", "the compass", "chess", "origami", "the violin", "radar", "yoga")
_PEOPLE = ("Ada Lovelace", "Nelson Mandela", "Marie Curie", "Frida Kahlo", "Leonardo da Vinci",
           "Nikola Tesla", "Jane Austen", "Alan Turing", "Rosa Parks", "Miles Davis")
_ACRONYMS = ("NASA", "UNESCO", "laser", "scuba", "NATO", "DNA", "HTML", "GPS", "RSVP", "CPU")

BANKS: dict[str, tuple[str, ...]] = {
    "numeric value": (
        "How many moons does {planet} have?", "How far is {place} from the sea?",
        "When was {thing} invented?", "What year did {person} die?",
        "How old was {person} in 1900?", "How much does a ticket to {place} cost?",
        "How long is the coastline of {place}?", "What percentage of {place} is forest?",
        "How tall is the tallest tower in {place}?",
        "How many people speak the language of {place}?",
        # Phrased like an entity question: the rules of the scripted model miss it,
        # so its offline scores are not all perfect.
        "What is the population of {place}?",
    ),
    "entity": (
        "What instrument did {person} play?", "What is the fastest animal in {place}?",
        "Name a dish people eat in {place}.", "What breed of dog guards {place}?",
        "Which language is spoken in {place}?", "What was the first product made with {thing}?",
        "What sport is most popular in {place}?", "What plant grows best near {place}?",
        "What currency is used in {place}?",
    ),
    "human being": (
        "Who invented {thing}?", "Who was the first person to cross {place}?",
        "Who painted the portrait of {person}?", "What author wrote about {thing}?",
        "Who taught {person} to read?", "What scientist first studied {thing}?",
        "Who founded the oldest school in {place}?",
    ),
    "location": (
        "Where was {person} born?", "Where is {place} located?", "What country is {place} in?",
        "What city did {person} live in?", "Where was {thing} first used?",
        "In what country was {thing} invented?", "What river flows through {place}?",
        "Where can you see {thing} today?",
    ),
    "description and abstract concept": (
        "Why is {place} famous?", "How does {thing} work?", "What is a {word}?",
        "What is the definition of {word}?", "Why did {person} become famous?",
        "Describe the importance of {thing}.", "What is the meaning of {word}?",
        "How do people use {thing}?",
    ),
    "abbreviation": (
        "What does {acronym} stand for?", "What is the full form of {acronym}?",
        "What is the abbreviation for {thing}?", "What is {acronym} an acronym for?",
    ),
}
_PLANETS = ("Mars", "Jupiter", "Saturn", "Neptune", "Uranus")
_WORDS = ("sonnet", "glacier", "monsoon", "algorithm", "democracy", "metaphor", "tariff")

START = date(2022, 1, 1)
DAYS = 3 * 365


@dataclass(frozen=True)
class Row:
    day: date
    user: int
    question: str
    label: str

    def line(self) -> str:
        return (f"Date: {format_day(self.day)} || User: {self.user} || "
                f"Instance: {self.question}")


def format_day(day: date) -> str:
    return f"{day:%b} {day.day:02d}, {day.year}"


def question_for(rng: random.Random, label: str) -> str:
    template = rng.choice(BANKS[label])
    return template.format(planet=rng.choice(_PLANETS), place=rng.choice(_PLACES),
                           thing=rng.choice(_THINGS), person=rng.choice(_PEOPLE),
                           acronym=rng.choice(_ACRONYMS), word=rng.choice(_WORDS))


def make_users(rng: random.Random, count: int) -> list[int]:
    return sorted(rng.sample(range(10_000, 99_999), count))


def make_row(rng: random.Random, users: list[int], label: str | None = None) -> Row:
    label = label or rng.choices(LABELS, WEIGHTS)[0]
    return Row(START + timedelta(days=rng.randrange(DAYS)), rng.choice(users),
               question_for(rng, label), label)


def make_rows(rng: random.Random, users: list[int], chars: int) -> list[Row]:
    """Rows until their lines fill about ``chars`` characters."""
    rows: list[Row] = []
    size = 0
    while size < chars:
        row = make_row(rng, users)
        rows.append(row)
        size += len(row.line()) + 1
    return rows


def render(rows: list[Row]) -> str:
    return "\n".join(row.line() for row in rows) + "\n"


PREAMBLE = (
    "The context lists questions people asked, one per line, each with a date and a user "
    "id: 'Date: <date> || User: <id> || Instance: <question>'. Every question belongs to "
    "exactly one of 6 labels: " + ", ".join(LABELS) + ". The labels are not given: infer "
    "each one from the question.\n"
)
