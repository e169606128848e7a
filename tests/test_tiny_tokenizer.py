"""The tiny tokenizer's ids are frozen: its corpus is a checked-in file, not the current templates and CoT writer."""

from descore_plugin.testing.tiny import build_tokenizer

KNOWN = 'The subject <Reward> moves left; camera pans. {"overall": 3}'
KNOWN_IDS = [490, 75, 398, 227, 713, 227, 83, 315, 496, 383, 33, 365, 227, 86, 273, 89, 20, 323, 317, 263, 227, 25, 99]


def test_token_ids_of_a_known_string_never_change():
    tokenizer = build_tokenizer()
    assert tokenizer(KNOWN).input_ids == KNOWN_IDS
    assert len(tokenizer) == 714 and tokenizer.convert_tokens_to_ids("<Reward>") == 713


def test_rewording_a_template_or_a_cot_does_not_change_the_ids(monkeypatch):
    from descore_plugin.testing import synthetic

    monkeypatch.setattr(synthetic, "vocabulary_texts", lambda *args, **kwargs: ["entirely different words"])
    assert build_tokenizer()(KNOWN).input_ids == KNOWN_IDS
