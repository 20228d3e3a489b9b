"""The synthetic corpus: deterministic, prefix-stable, varied, and prepared like any other source."""
from tinystories.data import DataConfig, load_tokens, prepare_data, read_meta
from tinystories.data.synthetic import TEST_STORIES, synthetic_stories, synthetic_story
from tinystories.tokenizer import EOT_TOKEN, get_tokenizer


def test_stories_are_deterministic_and_prefix_stable():
    first = list(synthetic_stories("train", 50))
    assert first == list(synthetic_stories("train", 50))
    assert list(synthetic_stories("train", 20)) == first[:20]
    assert synthetic_story(1, "train", 0) != synthetic_story(2, "train", 0)
    assert list(synthetic_stories("test", 5)) != first[:5]


def test_stories_are_varied_short_english():
    stories = list(synthetic_stories("train", 500))
    assert len(set(stories)) > 490
    assert all(50 < len(story.split()) < 250 and story == story.strip() and "{" not in story for story in stories)
    assert len({story.split(".")[0] for story in stories}) > 100  # many different openings


def test_prepare_synthetic_with_max_stories(tmp_path):
    data_dir = prepare_data(DataConfig(dataset="synthetic", max_stories=300, data_dir=str(tmp_path)), progress=False)
    meta = read_meta(data_dir)
    splits = meta["splits"]
    assert splits["train"]["stories"] + splits["validation"]["stories"] == 300
    assert splits["test"]["stories"] == min(300, TEST_STORIES)
    test_text = get_tokenizer().decode(load_tokens(data_dir, "test").tolist())
    assert test_text == EOT_TOKEN.join(synthetic_stories("test", 300)) + EOT_TOKEN
