"""Write the small task files under tests/data/ from templates: deterministic, no downloads.

    .venv/bin/python tests/data/make_tasks.py

- ``topics/``: four news topics with word labels (World, Sports, Business,
  Sci/Tech), as a headerless TSV (``label<TAB>text``) and the same rows as
  Parquet (columns ``label``, ``text``); 320 train and 80 test rows.
- ``pairs/``: premise/hypothesis pairs labelled ``entailment`` or
  ``not_entailment``, as JSON lines; 320 train and 80 test rows. A
  hypothesis restates two of the premise's person, action and place
  (entailment) or swaps one of those two for another of its kind
  (not_entailment); both kinds are drawn from the same words, so the
  hypothesis alone does not give the label away: the model must compare it
  with the premise.

Each topic sentence combines a topic's actors, events and details with words
shared by every topic (days, cities, "officials said"), in one of several
templates, so no single word in a fixed place gives the label away.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
TRAIN, TEST = 320, 80
SIMILARITY, CORPUS = 40, 120

TOPICS = {
    "World": {
        "actors": ["the prime minister", "rebel leaders", "the foreign ministry", "UN peacekeepers", "the opposition party",
                   "border guards", "the ambassador", "refugee agencies", "the president", "coalition negotiators"],
        "events": ["signed a ceasefire", "called for new elections", "closed the embassy", "held talks on the border dispute",
                   "announced sanctions", "withdrew troops", "condemned the attack", "reached a peace deal",
                   "declared a state of emergency", "opened a humanitarian corridor"],
        "details": ["after weeks of fighting", "amid mass protests", "ahead of a disputed vote", "following a diplomatic row",
                    "as aid convoys waited", "despite international pressure"],
    },
    "Sports": {
        "actors": ["the home side", "the defending champions", "the striker", "the national team", "the veteran goalkeeper",
                   "the young sprinter", "the head coach", "the tennis star", "the rookie quarterback", "the cycling team"],
        "events": ["won the final", "scored twice in the second half", "broke the world record", "was knocked out in the semifinal",
                   "signed a three-year contract", "clinched the league title", "lost on penalties", "set a new personal best",
                   "retired from international play", "came back from two sets down"],
        "details": ["in front of a sellout crowd", "after extra time", "despite a hamstring injury", "in the season opener",
                    "on a rain-soaked pitch", "with a late equalizer"],
    },
    "Business": {
        "actors": ["the retailer", "shareholders", "the central bank", "the carmaker", "the airline", "investors",
                   "the oil company", "the chief executive", "the bank's board", "the supermarket chain"],
        "events": ["reported quarterly profits", "cut interest rates", "announced a merger", "laid off workers",
                   "raised its sales forecast", "saw its shares fall", "agreed to a takeover bid", "posted record revenue",
                   "filed for bankruptcy protection", "issued new bonds"],
        "details": ["as inflation eased", "beating analyst estimates", "amid weak consumer demand", "after a slow holiday season",
                    "as fuel costs rose", "ahead of its annual meeting"],
    },
    "Sci/Tech": {
        "actors": ["researchers", "the software company", "astronomers", "the chipmaker", "engineers", "the space agency",
                   "a team of biologists", "the startup", "security experts", "the smartphone maker"],
        "events": ["released a new operating system", "discovered a distant planet", "launched a satellite",
                   "unveiled a faster processor", "patched a critical vulnerability", "sequenced the genome",
                   "demonstrated a quantum computer", "published the study", "announced a cheaper battery", "tested a reusable rocket"],
        "details": ["using machine learning", "in a peer-reviewed journal", "at a developer conference", "after years of lab tests",
                    "with open-source code", "from an orbiting telescope"],
    },
}
SHARED = {
    "when": ["on Monday", "on Tuesday", "late on Wednesday", "on Thursday", "on Friday", "over the weekend", "this week", "last month"],
    "where": ["in London", "in Tokyo", "in Nairobi", "in Berlin", "in New York", "in Sao Paulo", "in Sydney", "in Mumbai"],
    "report": ["officials said", "according to a statement", "local media reported", "sources told reporters", "the report said"],
}
TEMPLATES = [
    "{actor} {event} {where} {when}, {report}.",
    "{when}, {actor} {event} {detail}.",
    "{report}: {actor} {event} {where} {detail}.",
    "{where}, {actor} {event} {when} {detail}.",
    "{actor} {event} {detail}, {report} {when}.",
]


def topic_rows(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """``count`` distinct (label, text) rows, labels balanced and shuffled."""
    rows, seen = [], set()
    labels = [label for _ in range(count // len(TOPICS)) for label in TOPICS]
    for label in labels:
        words = TOPICS[label]
        while True:
            text = rng.choice(TEMPLATES).format(
                actor=rng.choice(words["actors"]), event=rng.choice(words["events"]), detail=rng.choice(words["details"]),
                **{key: rng.choice(values) for key, values in SHARED.items()},
            )
            text = text[0].upper() + text[1:]
            if text not in seen:
                seen.add(text)
                rows.append((label, text))
                break
    rng.shuffle(rows)
    return rows


PEOPLE = ["boy", "girl", "old man", "young woman", "nurse", "doctor", "chef", "soldier", "tourist", "farmer"]
ACTIONS = ["is playing a violin", "is riding a bicycle", "is reading a newspaper", "is eating a sandwich", "is painting a fence",
           "is kicking a ball", "is swimming laps", "is repairing a car", "is singing a song", "is climbing a ladder"]
PLACES = ["in a crowded park", "on a sandy beach", "in a small kitchen", "inside a library", "on a busy street",
          "in a hospital hallway", "beside a frozen lake", "in a school gym"]
HYPOTHESES = [  # each restates two of the premise's three parts
    ("person", "place", "The {person} is {place}."),
    ("action", "place", "Someone {action} {place}."),
    ("person", "action", "The {person} {action}."),
    ("place", "person", "{place}, you can see the {person}."),
    ("action", "person", "The {person} {action} here."),
]


def pair_rows(rng: random.Random, count: int) -> list[dict[str, str]]:
    """``count`` distinct premise/hypothesis rows, half entailed; a non-entailed hypothesis changes one part it restates."""
    rows, seen = [], set()
    for index in range(count):
        entailed = index % 2 == 0
        while True:
            parts = {"person": rng.choice(PEOPLE), "action": rng.choice(ACTIONS), "place": rng.choice(PLACES)}
            article = "An" if parts["person"][0] in "aeiou" else "A"
            premise = f"{article} {parts['person']} {parts['action']} {parts['place']}."
            first, second, template = rng.choice(HYPOTHESES)
            said = dict(parts)
            if not entailed:  # one restated part swapped for another of its kind
                part = rng.choice([first, second])
                said[part] = rng.choice([word for word in {"person": PEOPLE, "action": ACTIONS, "place": PLACES}[part] if word != parts[part]])
            hypothesis = template.format(**said)
            hypothesis = hypothesis[0].upper() + hypothesis[1:]
            if (premise, hypothesis) not in seen:
                seen.add((premise, hypothesis))
                rows.append({"premise": premise, "hypothesis": hypothesis, "label": "entailment" if entailed else "not_entailment"})
                break
    rng.shuffle(rows)
    return rows


def similarity_rows(rng: random.Random, count: int) -> list[dict]:
    """``count`` pairs of person-action-place sentences; the gold score is how many of the three parts they share (0-3)."""
    def sentence(parts: dict[str, str]) -> str:
        article = "An" if parts["person"][0] in "aeiou" else "A"
        return f"{article} {parts['person']} {parts['action']} {parts['place']}."

    kinds = {"person": PEOPLE, "action": ACTIONS, "place": PLACES}
    rows = []
    for index in range(count):
        shared = index % 4
        first = {kind: rng.choice(words) for kind, words in kinds.items()}
        kept = set(rng.sample(sorted(kinds), shared))
        second = {kind: first[kind] if kind in kept else rng.choice([w for w in words if w != first[kind]]) for kind, words in kinds.items()}
        rows.append({"sentence1": sentence(first), "sentence2": sentence(second), "score": float(shared)})
    rng.shuffle(rows)
    return rows


def retrieval_files(rng: random.Random, documents: int) -> tuple[list[dict], list[dict], dict[str, list[tuple[str, str, int]]]]:
    """A corpus of topic sentences (some titled), one query per (actor, event) that several documents report, and judgements
    split into dev and test by query: 2 for a document with the query's actor and event, 1 for one with its event only."""
    corpus, facts = [], []
    for index in range(documents):
        label = list(TOPICS)[index % len(TOPICS)]
        words = TOPICS[label]
        actor, event = rng.choice(words["actors"][:3]), rng.choice(words["events"][:3])
        text = rng.choice(TEMPLATES).format(actor=actor, event=event, detail=rng.choice(words["details"]),
                                            **{key: rng.choice(values) for key, values in SHARED.items()})
        corpus.append({"_id": f"d{index}", "title": label if index % 3 == 0 else "", "text": text[0].upper() + text[1:]})
        facts.append((actor, event))
    queries, qrels = [], {"dev": [], "test": []}
    for number, (actor, event) in enumerate(sorted(set(facts))):
        query = f"q{number}"
        queries.append({"_id": query, "text": f"Which reports say {actor} {event}?"})
        split = "dev" if number % 2 == 0 else "test"
        for document, (other_actor, other_event) in zip(corpus, facts):
            if other_event == event:
                qrels[split].append((query, document["_id"], 2 if other_actor == actor else 1))
    return corpus, queries, qrels


def main() -> None:
    rng = random.Random(12)
    topics = topic_rows(rng, TRAIN + TEST)
    pairs = pair_rows(rng, TRAIN + TEST)
    (HERE / "topics").mkdir(exist_ok=True)
    (HERE / "pairs").mkdir(exist_ok=True)
    for split, rows in (("train", topics[:TRAIN]), ("test", topics[TRAIN:])):
        (HERE / "topics" / f"{split}.tsv").write_text("".join(f"{label}\t{text}\n" for label, text in rows))
        table = pa.table({"label": [label for label, _ in rows], "text": [text for _, text in rows]})
        pq.write_table(table, HERE / "topics" / f"{split}.parquet")
    for split, rows in (("train", pairs[:TRAIN]), ("test", pairs[TRAIN:])):
        (HERE / "pairs" / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    labelled = random.Random(13)  # its own seed: the files above keep their bytes
    (HERE / "similarity").mkdir(exist_ok=True)
    similarity = similarity_rows(labelled, 2 * SIMILARITY)
    for split, rows in (("dev", similarity[:SIMILARITY]), ("test", similarity[SIMILARITY:])):
        (HERE / "similarity" / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    corpus, queries, qrels = retrieval_files(labelled, CORPUS)
    (HERE / "retrieval" / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus", corpus), ("queries", queries)):
        (HERE / "retrieval" / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for split, judged in qrels.items():
        lines = "".join(f"{query}\t{document}\t{grade}\n" for query, document, grade in judged)
        (HERE / "retrieval" / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + lines)


if __name__ == "__main__":
    main()
