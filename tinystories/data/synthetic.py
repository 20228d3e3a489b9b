"""A generated corpus of simple stories, so that prepare, train, generate and evaluate run with no network.

A small seeded grammar of characters, places, things and five plots. Story `i` of a split depends only on
(`GENERATOR_VERSION`, split, i), so the corpus is the same on every machine and its first N stories do not
change with N. Change `GENERATOR_VERSION` whenever the grammar changes: it is part of the cache key.
"""
from __future__ import annotations

import random
from typing import Iterator

GENERATOR_VERSION = 1
TRAIN_STORIES = 20_000
TEST_STORIES = 1_000

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Tim", "Zoe", "Sam", "Lucy", "Jack", "Emma", "Leo",
         "Ella", "Finn", "Rosa", "Omar", "Kim", "Noah", "Ava", "Jake", "Nina", "Ravi"]
CREATURES = [("girl", "she"), ("boy", "he"), ("puppy", "he"), ("kitten", "she"),
             ("bunny", "she"), ("bear", "he"), ("bird", "she"), ("frog", "he"),
             ("duck", "she"), ("mouse", "he")]
ADJECTIVES = ["little", "happy", "curious", "brave", "kind", "shy", "silly", "small", "gentle", "busy"]
PLACES = ["the park", "the forest", "the garden", "the beach", "a big farm", "the town", "the hill",
          "a small house", "the river", "the school"]
THINGS = [("ball", "red"), ("kite", "blue"), ("book", "old"), ("hat", "yellow"), ("shell", "shiny"),
          ("box", "wooden"), ("flower", "pink"), ("toy car", "green"), ("cake", "sweet"), ("stone", "smooth")]
FEELINGS = ["happy", "sad", "scared", "excited", "proud", "sleepy", "surprised", "angry"]
WEATHER = ["The sun was warm.", "It was a windy day.", "The sky was grey and it began to rain.",
           "Birds were singing in the trees.", "It was a cold morning.", "The flowers smelled nice."]
OPENINGS = ["Once upon a time, there was a {adj} {kind} named {name}.",
            "One day, a {adj} {kind} named {name} went to {place}.",
            "There was once a {adj} {kind} called {name} who lived near {place}.",
            "{name} was a {adj} {kind} who loved to play."]
ENDINGS = ["From that day on, {name} and {friend} were best friends.",
           "{name} learned that it is good to share.",
           "{name} smiled and went home to sleep.",
           "That night, {name} dreamed about {place}.",
           "{name} knew that being kind is the best thing of all."]


def _plot_lost_thing(r: random.Random, s: dict) -> list[str]:
    return [f"{s['name']} had a {s['color']} {s['thing']}. {s['Pron']} loved it very much.",
            f"One day, {s['name']} went to {s['place']} and played with the {s['thing']}.",
            f"But then the {s['thing']} was gone! {s['name']} felt {r.choice(['sad', 'scared', 'worried'])}.",
            f"{s['name']} looked under a tree and behind a rock. {s['Pron']} could not find it.",
            f"Then {s['friend']} the {s['friend_kind']} came and said, \"I will help you look!\"",
            f"They looked together, and {s['friend']} found the {s['thing']} near {s['place2']}.",
            f"\"Thank you, {s['friend']}!\" said {s['name']}. "
            f"{s['Pron']} felt {r.choice(['happy', 'glad', 'proud'])} again."]


def _plot_sharing(r: random.Random, s: dict) -> list[str]:
    return [f"{s['name']} had a {s['color']} {s['thing']} and did not want to share it.",
            f"{s['friend']} the {s['friend_kind']} asked, \"Can I play with your {s['thing']}?\"",
            f"\"No, it is mine!\" said {s['name']}. {s['friend']} felt {r.choice(['sad', 'lonely'])} and walked away.",
            f"Soon {s['name']} was alone at {s['place']}, and playing alone was not fun.",
            f"{s['name']} ran after {s['friend']} and said, \"I am sorry. Let us play together.\"",
            f"They played with the {s['thing']} all day. {s['Pron']} laughed and laughed.",
            f"Sharing made the game {r.choice(['more fun', 'much better', 'twice as fun'])}."]


def _plot_adventure(r: random.Random, s: dict) -> list[str]:
    return [f"{s['name']} wanted to see what was on the other side of {s['place']}.",
            f"{s['Pron']} walked and walked. {r.choice(WEATHER)}",
            f"On the way, {s['name']} met {s['friend']}, a {r.choice(ADJECTIVES)} {s['friend_kind']}.",
            f"\"Where are you going?\" asked {s['friend']}. \"I am going to find {s['place2']},\" said {s['name']}.",
            f"They went together. They saw a {s['color']} {s['thing']} lying on the path.",
            f"{s['name']} picked it up and said, \"We can take it with us!\"",
            f"At last they reached {s['place2']}. "
            f"It was {r.choice(['big and beautiful', 'quiet and green', 'full of light'])}."]


def _plot_helping(r: random.Random, s: dict) -> list[str]:
    return [f"One morning, {s['name']} saw {s['friend']} the {s['friend_kind']} crying at {s['place']}.",
            f"\"What is wrong?\" asked {s['name']}.",
            f"\"I cannot reach my {s['thing']}. It is stuck up in the tree,\" said {s['friend']}.",
            f"{s['name']} thought for a moment. Then {s['pron']} had an idea.",
            f"{s['Pron']} found a long stick and pushed the {s['color']} {s['thing']} down.",
            f"{s['friend']} was so {r.choice(['happy', 'thankful', 'excited'])}. \"You are a good friend!\"",
            f"{s['name']} felt {r.choice(FEELINGS[:5])} to help."]


def _plot_lesson(r: random.Random, s: dict) -> list[str]:
    return [f"{s['name']}'s mom said, \"Do not go to {s['place2']} alone. It is not safe.\"",
            f"But {s['name']} was {r.choice(['curious', 'bored', 'brave'])} and went anyway.",
            f"At {s['place2']}, {s['name']} saw a {s['color']} {s['thing']} and ran to get it.",
            f"Then {s['pron']} slipped and fell down. {s['Pron']} was {r.choice(['scared', 'hurt', 'sad'])}.",
            f"{s['friend']} the {s['friend_kind']} heard {s['name']} and ran to get mom.",
            f"Mom came and gave {s['name']} a big hug. \"I am glad you are safe,\" she said.",
            f"{s['name']} said, \"I am sorry, mom. I will listen next time.\""]


PLOTS = [_plot_lost_thing, _plot_sharing, _plot_adventure, _plot_helping, _plot_lesson]


def synthetic_story(index: int, split: str = "train", version: int = GENERATOR_VERSION) -> str:
    """Story `index` of `split`: the same text on every machine and in every run."""
    r = random.Random(f"tinystories-synthetic/{version}/{split}/{index}")
    kind, pron = r.choice(CREATURES)
    name, friend = r.sample(NAMES, 2)
    thing, color = r.choice(THINGS)
    place, place2 = r.sample(PLACES, 2)
    slots = {"name": name, "friend": friend, "friend_kind": r.choice(CREATURES)[0], "kind": kind, "pron": pron,
             "Pron": pron.capitalize(), "adj": r.choice(ADJECTIVES), "thing": thing,
             "color": r.choice([color, r.choice(["red", "blue", "big", "tiny", "soft"])]), "place": place,
             "place2": place2}
    sentences = [r.choice(OPENINGS).format(**slots)]
    if r.random() < 0.5:
        sentences.append(r.choice(WEATHER))
    sentences += r.choice(PLOTS)(r, slots)
    sentences.append(r.choice(ENDINGS).format(**slots))
    paragraphs = [" ".join(sentences[:3]), " ".join(sentences[3:-1]), sentences[-1]]
    return "\n\n".join(paragraphs)


def synthetic_stories(split: str, count: int) -> Iterator[str]:
    """The first `count` stories of `split` (any name: "train", "test", ...)."""
    for index in range(count):
        yield synthetic_story(index, split)
