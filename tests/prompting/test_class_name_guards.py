"""Class names that cannot become prompts are refused with a message naming them (issue 11 §4, "Class names").

A 5,003-character class name used to be cut off silently by open_clip's tokenizer (the class word lost, that class
scoring 0.33 against 1.0): the prompt must keep every class token, so such a name is refused, naming the class and the
backbone's text context length. Names that are not UTF-8 are refused when the dataset is read (tests/data)."""

import pytest

from models.experiments import build_classifier
from models.prompting.prompt_assembly import ClassNameTooLongError, untruncated_token_count

LONG_NAME = "zebra" + " stripe" * 714  # 5,003 characters


def test_the_tokenizer_alone_truncates_silently(reference_clip):
    """What the guard is for: the plain tokenizer keeps 77 tokens and drops the rest without a word."""
    _, tokenizer = reference_clip
    ids = tokenizer([f"a photo of a {LONG_NAME}."])
    assert ids.shape[1] == 77 and int((ids != 0).sum()) == 77
    assert untruncated_token_count(tokenizer, f"a photo of a {LONG_NAME}.") > 700


@pytest.mark.parametrize("method", ["zero_shot", "coop", "cocoop", "kgcoop"])
def test_a_class_name_longer_than_the_context_is_refused_by_name(reference_clip, method):
    model, tokenizer = reference_clip
    with pytest.raises(ClassNameTooLongError) as raised:
        build_classifier(model, tokenizer, method, {}, ["cat", LONG_NAME], ["a photo of a {}."])
    message = str(raised.value)
    assert "zebra stripe" in message and "5003 characters" in message
    assert "context length is 77" in message
    assert message.startswith("class 'zebra stripe")


def test_a_name_that_fits_exactly_is_kept(reference_clip):
    """The boundary: a prompt of exactly the context length (start and end tokens included) passes."""
    model, tokenizer = reference_clip
    template = "a photo of a {}."
    overhead = untruncated_token_count(tokenizer, template.format(""))
    name = " ".join(["cat"] * (77 - overhead))
    assert untruncated_token_count(tokenizer, template.format(name)) == 77
    build_classifier(model, tokenizer, "zero_shot", {}, [name, "dog"], [template])
    with pytest.raises(ClassNameTooLongError):
        build_classifier(model, tokenizer, "zero_shot", {}, [name + " cat", "dog"], [template])
