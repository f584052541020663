import subprocess
import sys

import pytest

from models.vocab import (
    CaptionTooLongError,
    EmptyCaptionError,
    UnknownWordsError,
    Vocabulary,
    tokenize,
)

WORDS = [*"0123456789", "the", "digit", "is", "on", "at", "left", "right", "bottom", "top", "of", "image", "."]


def test_tokenize_lowercases_splits_punctuation_and_maps_number_words():
    tokens = tokenize("The digit Seven is at the TOP-left, of the image.")
    assert [t.text for t in tokens] == [
        "the", "digit", "7", "is", "at", "the", "top-left", ",", "of", "the", "image", ".",
    ]
    assert [t.text for t in tokenize("digit 7")] == [t.text for t in tokenize("DIGIT seven")]
    caption = "a  Cat!"
    assert [(caption[t.start : t.end], t.text) for t in tokenize(caption)] == [("a", "a"), ("Cat", "cat"), ("!", "!")]


def test_encode_and_decode_round_trip_with_padding_index_zero():
    vocab = Vocabulary(WORDS, max_length=12)
    assert len(vocab) == 23 and vocab.itos[0] == "<pad>"
    ids = vocab.encode("the digit three is on the left of the digit 1 .")
    assert len(ids) == 12 and 0 not in ids
    assert vocab.decode(ids) == "the digit 3 is on the left of the digit 1 ."
    batch, lengths = vocab.encode_batch(["the digit 1 .", "the digit 2 is at the top ."])
    assert lengths == [4, 8] and batch[0][4:] == [0, 0, 0, 0] and len(batch[1]) == 8


def test_unknown_words_are_reported_by_name_and_position():
    vocab = Vocabulary(WORDS)
    caption = "the Digit 3 is beside the cat ."
    with pytest.raises(UnknownWordsError) as err:
        vocab.encode(caption)
    unknown = err.value.unknown
    assert [(u.word, u.position) for u in unknown] == [("beside", 4), ("cat", 6)]
    assert [caption[u.start : u.end] for u in unknown] == ["beside", "cat"]
    assert "'beside' at position 4" in str(err.value)


def test_empty_and_too_long_captions_are_refused():
    vocab = Vocabulary(WORDS, max_length=5)
    with pytest.raises(EmptyCaptionError):
        vocab.encode("   ")
    with pytest.raises(CaptionTooLongError) as err:
        vocab.encode("the digit 1 is on the left")
    assert err.value.length == 7 and err.value.max_length == 5
    with pytest.raises(UnknownWordsError):
        vocab.encode("<pad>")  # the padding symbol is not a word a user can type


def test_vocabulary_round_trips_through_json_dict():
    vocab = Vocabulary(WORDS, max_length=12)
    again = Vocabulary.from_dict(vocab.to_dict())
    assert again.itos == vocab.itos and again.max_length == 12


def test_vocab_module_does_not_import_torch():
    code = "import sys, models.vocab; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sentence_reads_a_text_family_row_up_to_its_end_word():
    """One reader of decoded rows for the worker, the evaluator and the trainer's previews: words up to the first
    <eos>, <pad> and <bos> dropped (<unk> kept), the data's spelling where given, at most max_words."""
    v = Vocabulary(["<bos>", "<eos>", "<unk>", "the", "cat", "n"], max_length=3)
    bos, eos, unk, the, cat, n = (v.stoi[w] for w in ("<bos>", "<eos>", "<unk>", "the", "cat", "n"))
    assert v.sentence([bos, the, unk, cat, eos, the, 0, 0]) == "the <unk> cat"
    assert v.sentence([the, cat, the, cat]) == "the cat the cat"  # no <eos>: the whole row
    assert v.sentence([the, cat, the, cat], max_words=3) == "the cat the"
    assert v.sentence([eos, the]) == ""
    spelling = list(v.itos)
    spelling[n] = "N"
    assert v.sentence([the, n, eos], spelling=spelling) == "the N"


def test_a_text_familys_sentence_reads_back_as_it_was_written():
    """Penn Treebank's tokens ("mr.", "'s", "u.s.", "<unk>") are words the tokeniser would split: as whole
    space-separated chunks they stay whole, so a sentence the model wrote (Vocabulary.sentence) encodes back to its
    ids, on the model's vocabulary and on the API's (its typeable words). Markers are never typed whole, and a
    caption's "left." still splits."""
    words = ["<bos>", "<eos>", "<unk>", "mr.", "smith", "'s", "u.s.", "n", "rose", "left", "."]
    v = Vocabulary(words, max_length=12)
    ids = [v.stoi[w] for w in ("mr.", "smith", "'s", "<unk>", "u.s.", "n", "rose")]
    spelling = list(v.itos)
    spelling[v.stoi["n"]] = "N"
    written = v.sentence([v.stoi["<bos>"], *ids, v.stoi["<eos>"]], spelling=spelling)
    assert written == "mr. smith 's <unk> u.s. N rose"
    assert v.encode(written) == ids
    assert v.typeable() == [w for w in words if w not in ("<bos>", "<eos>")]
    api = Vocabulary(v.typeable(), max_length=12)
    assert [t.text for t in api.check(written)] == [v.itos[i] for i in ids]
    # offsets into the text as given; "smith's" is no word, so the tokeniser's rule reads it (as one unknown word)
    assert [(t.text, t.start, t.end) for t in v.tokens("Mr.  smith's")] == [("mr.", 0, 3), ("smith's", 5, 12)]
    with pytest.raises(UnknownWordsError, match="smith's"):
        v.check("Mr.  smith's")
    with pytest.raises(UnknownWordsError, match="'<'"):
        v.check("rose <eos> rose")  # a marker typed mid-sentence splits into pieces, none of them words
    assert [t.text for t in v.check("left.")] == ["left", "."]
    assert [t.text for t in v.check("Mr.")] == ["mr."]


def test_kept_checks_answer_as_fresh_ones_and_never_keep_an_error(monkeypatch):
    import models.vocab as vocab_module

    monkeypatch.setattr(vocab_module, "CHECKED_KEPT", 3)
    v = Vocabulary(["the", "digit", "3", "is", "at", "top"], max_length=5)
    fresh = Vocabulary(["the", "digit", "3", "is", "at", "top"], max_length=5)
    first = v.check("The digit three")
    first.append("changed by a caller")  # a copy: the kept answer is not the caller's list
    for caption in ["The digit three", "3 is at top", "the 3", "top", "The digit three"]:  # past the bound: cleared
        assert v.check(caption) == fresh._check(caption)
    for _ in range(2):
        with pytest.raises(UnknownWordsError):
            v.check("the digit 7")
        with pytest.raises(CaptionTooLongError):
            v.check("the digit 3 is at top")
    assert len(v._checked) <= 3
