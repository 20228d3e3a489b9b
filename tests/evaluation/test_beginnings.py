"""tinystories.evaluation.beginnings: seeded cuts of stories at word boundaries, and beginnings read from files."""
import pytest

from tinystories.errors import UserError
from tinystories.evaluation.beginnings import read_beginnings, story_beginning


def test_story_beginnings_cut_after_a_seeded_word():
    story = "Once upon a time, there was a girl named Lily. She loved to play outside in the park with her dog."
    words = story.split()
    cuts = set()
    for number in range(40):
        beginning = story_beginning(story, seed=3, number=number)
        kept = beginning.split()
        assert story.startswith(beginning) and kept == words[:len(kept)]
        assert len(words) * 3 // 10 <= len(kept) <= len(words) * 6 // 10
        assert beginning == story_beginning(story, seed=3, number=number)
        cuts.add(len(kept))
    assert len(cuts) > 3  # the point moves from story to story
    assert story_beginning("Hello", seed=0, number=0) == "Hello"
    with pytest.raises(UserError):
        story_beginning("   ", seed=0, number=0)


def test_beginnings_from_files(tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("Tom had a ball.\n\n  Lily saw a\n")
    assert read_beginnings(str(lines)) == ["Tom had a ball.", "Lily saw a"]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('"One day"\n{"prompt": "The cat"}\n\n{"text": "A dog"}\n')
    assert read_beginnings(str(jsonl)) == ["One day", "The cat", "A dog"]
    yaml_file = tmp_path / "prompts.yaml"
    yaml_file.write_text("- Once upon a time\n- 'The sun: hot'\n")
    assert read_beginnings(str(yaml_file)) == ["Once upon a time", "The sun: hot"]
    for name, content, message in [("bad.jsonl", '{"x": 1}\n', "bad.jsonl:1"), ("bad.yaml", "a: b\n", "YAML list"),
                                   ("empty.txt", "\n\n", "no beginnings")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(UserError, match=message):
            read_beginnings(str(tmp_path / name))
    with pytest.raises(UserError, match="not found"):
        read_beginnings(str(tmp_path / "missing.txt"))
