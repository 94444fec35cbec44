import pytest

from classlm.errors import ConfigError
from classlm.labels import LabelSet
from classlm.prompts import PromptTemplate

LABELS = LabelSet.from_spec({"World": "world politics", "Sports": "sport"})


def test_chat_prompt_ends_at_the_assistant_tag(tiny_tokenizer):
    rendered = PromptTemplate(instruction="Classify the news.").render(LABELS, tiny_tokenizer)
    assert rendered.chat
    assert rendered.tail.endswith("<|im_start|>assistant\n")
    assert rendered.head.startswith("<|im_start|>user\n")
    assert not rendered.leading_space
    full = rendered.format("Stocks fell.")
    assert "Classify the news. Answer with the class name only." in full
    assert "- World: world politics\n- Sports: sport" in full
    assert "Text:\nStocks fell.<|im_end|>" in full


def test_plain_prompt_ends_with_the_cue_and_wants_a_space(tiny_tokenizer):
    rendered = PromptTemplate(chat=False, answer_cue="Label:").render(LABELS, tiny_tokenizer)
    assert not rendered.chat
    assert rendered.tail == "\nLabel:"
    assert rendered.leading_space


def test_plain_mode_without_a_tokenizer():
    rendered = PromptTemplate().render(LABELS, None)
    assert not rendered.chat and rendered.head.endswith("Text:\n")


def test_system_message_is_used(tiny_tokenizer):
    rendered = PromptTemplate(system="You sort news.").render(LABELS, tiny_tokenizer)
    assert rendered.head.startswith("<|im_start|>system\nYou sort news.<|im_end|>")


def test_letters_listing_and_hint(tiny_tokenizer):
    letters = LabelSet.from_spec(LABELS, letters=True)
    full = PromptTemplate().render(letters, tiny_tokenizer).format("x")
    assert "- A. World: world politics\n- B. Sports: sport" in full
    assert "Answer with the letter of the class only." in full


def test_few_shot_examples_use_the_answers(tiny_tokenizer):
    template = PromptTemplate(examples=(("Goal in the last minute", "Sports"),), chat=False)
    full = template.render(LabelSet.from_spec(LABELS, letters=True), tiny_tokenizer).format("x")
    assert "Examples:\n\nText:\nGoal in the last minute\nAnswer: B" in full
    with pytest.raises(ConfigError, match="not classes"):
        PromptTemplate(examples=(("t", "Cooking"),)).render(LABELS, tiny_tokenizer)


def test_chat_requested_without_template():
    with pytest.raises(ConfigError, match="no chat template"):
        PromptTemplate(chat=True).render(LABELS, None)


def test_bad_examples_rejected():
    with pytest.raises(ConfigError, match="pair of strings"):
        PromptTemplate(examples=(("only text",),))


def test_dict_round_trip():
    template = PromptTemplate(instruction="Do it.", examples=(("a", "World"),), chat=False)
    assert PromptTemplate.from_dict(template.to_dict()) == template
    with pytest.raises(ConfigError, match="unknown option"):
        PromptTemplate.from_dict({"instructions": "typo"})
