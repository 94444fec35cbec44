import pytest

from classlm.errors import ArtifactError, ConfigError
from classlm.labels import LabelSet, needs_leading_space, resolve_class_tokens


def test_from_list_defaults_verbalizers_to_names():
    ls = LabelSet.from_spec(["neg", "pos"])
    assert ls.names == ("neg", "pos")
    assert ls.verbalizers == ("neg", "pos")
    assert ls.descriptions == (None, None)
    assert ls.answers == ("neg", "pos")


def test_from_mapping_with_descriptions_and_verbalizers():
    ls = LabelSet.from_spec(
        {"World": "world politics", "Sci/Tech": {"description": "science", "verbalizer": "Science"}}
    )
    assert ls.names == ("World", "Sci/Tech")
    assert ls.descriptions == ("world politics", "science")
    assert ls.verbalizers == ("World", "Science")


def test_letters_answers_and_limit():
    ls = LabelSet.from_spec(["x", "y", "z"], letters=True)
    assert ls.answers == ("A", "B", "C")
    many = LabelSet.from_spec([f"c{i}" for i in range(27)], letters=True)  # codes come from the tokenizer
    with pytest.raises(ConfigError, match="27 classes in letters mode need two-letter codes"):
        _ = many.answers


@pytest.mark.parametrize(
    "spec, match",
    [
        (["only"], "at least 2 classes"),
        (["a", "a"], "unique"),
        (["a", ""], "non-empty"),
        ("a,b", "got the string"),
        ({"a": {"colour": "red"}, "b": None}, "unknown keys"),
    ],
)
def test_bad_label_sets(spec, match):
    with pytest.raises(ConfigError, match=match):
        LabelSet.from_spec(spec)


def test_verbalizers_are_stripped_so_the_prompt_decides_the_space():
    ls = LabelSet(("a", "b"), verbalizers=(" yes", "no "))
    assert ls.verbalizers == ("yes", "no")


def test_dict_round_trip_and_bad_dict():
    ls = LabelSet.from_spec({"a": "first", "b": {"verbalizer": "bee"}}, letters=True)
    assert LabelSet.from_dict(ls.to_dict()) == ls
    with pytest.raises(ArtifactError, match="names"):
        LabelSet.from_dict({"labels": ["a", "b"]})


@pytest.mark.parametrize("end, expected", [("Answer:", True), ("assistant\n", False), ("Answer: ", False)])
def test_leading_space_follows_the_prompt_end(end, expected):
    assert needs_leading_space(end) is expected


def test_resolve_picks_the_space_variant(tiny_tokenizer):
    ls = LabelSet.from_spec(["World", "Sports"])
    spaced = resolve_class_tokens(ls, tiny_tokenizer, leading_space=True)
    bare = resolve_class_tokens(ls, tiny_tokenizer, leading_space=False)
    assert spaced.strings == (" World", " Sports")
    assert bare.strings == ("World", "Sports")
    assert spaced.sequences[0] == tuple(tiny_tokenizer.encode(" World", add_special_tokens=False))
    assert spaced.first_ids != bare.first_ids


def test_first_token_collision_names_classes_tokens_and_fixes(tiny_tokenizer):
    # "Sci/Tech" and "Sci/Fi" both start with the token for "Sci" in any BPE that splits on "/".
    ls = LabelSet.from_spec(["Sci/Tech", "Sci/Fi", "World"])
    with pytest.raises(ConfigError) as info:
        resolve_class_tokens(ls, tiny_tokenizer, leading_space=False)
    msg = str(info.value)
    assert "'Sci/Tech'" in msg and "'Sci/Fi'" in msg and "'World'" not in msg
    assert "first token" in msg
    assert "letters" in msg and "rename" in msg and "scoring='exact'" in msg
    # The clashing token is shown.
    first = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer.encode("Sci", add_special_tokens=False))[0]
    assert first in msg


def test_exact_scoring_only_needs_distinct_sequences(tiny_tokenizer):
    ls = LabelSet.from_spec(["Sci/Tech", "Sci/Fi"])
    tokens = resolve_class_tokens(ls, tiny_tokenizer, leading_space=False, require_distinct_first=False)
    assert tokens.first_ids[0] == tokens.first_ids[1]
    assert tokens.multi_token
