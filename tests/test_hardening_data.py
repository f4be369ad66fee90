"""Data files: every unusable file, row or value is a clear error naming the file, the row (and line) and the
column, instead of a traceback or a silently invented value ("None" texts and classes)."""
import pytest

from vtrans_kernels.prune.data import load_text_data

CASES = {
    "zero_bytes": ("a.csv", b"", r"a\.csv is empty \(0 bytes\)"),
    "header_only": ("a.csv", b"text,label\n", r"a\.csv has a header \(text, label\) but no data rows"),
    "not_utf8": ("a.csv", "text,label\nok,pos\nd\xe9j\xe0,neg\n".encode("latin-1"),
                 r"a\.csv line 3: not UTF-8 text \(byte 0xe9"),
    "empty_text": ("a.csv", b"text,label\nfine,pos\n,neg\n", r"a\.csv row 2 \(line 3\), column 'text': empty text"),
    "blank_text": ("a.jsonl", b'{"text": "a", "label": 0}\n{"text": "  ", "label": 1}\n',
                   r"a\.jsonl line 2, column 'text': empty text"),
    "null_text": ("a.jsonl", b'{"text": "a", "label": 0}\n{"text": null, "label": 1}\n',
                  r"a\.jsonl line 2, column 'text': expected a string, got None"),
    "blank_label": ("a.csv", b"text,label\na,pos\nb,neg\nc, \n", r"row 3 \(line 4\), column 'label': blank label"),
    "null_label": ("a.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": null}\n',
                   r"line 2, column 'label': blank label"),
    "non_numeric_label": ("a.csv", b"text,label\na,0\nb,1\nc,one\n",
                          r"row 3 \(line 4\), column 'label': 'one' is not an integer, while row 1 \(line 2\)"),
    "fractional_label": ("a.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": 0.5}\n',
                         r"line 2, column 'label': expected an integer class id or a class name, got 0\.5"),
    "one_class": ("a.csv", b"text,label\na,pos\nb,pos\n", r"every row has the label 'pos'; .*at least two classes"),
    "bad_json_line": ("a.jsonl", b'{"text": "a", "label": 0}\n{"text": \n', r"a\.jsonl line 2: not valid JSON"),
    "not_an_object": ("a.jsonl", b'{"text": "a", "label": 0}\n[1, 2]\n', r"line 2: expected a JSON object"),
    "ragged_row": ("a.csv", b"text,label\nhello, world,pos\n", r"row 1 \(line 2\): 3 fields, the header has 2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unusable_data_is_a_clear_error(tmp_path, case):
    name, content, message = CASES[case]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_text_data(str(tmp_path / name), "classification")


def test_lm_data_needs_real_texts_too(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "some words"}\n{"text": ""}\n')
    with pytest.raises(ValueError, match=r"line 2, column 'text': empty text"):
        load_text_data(str(tmp_path / "a.jsonl"), "lm")


def test_class_ids_of_a_trained_classifier(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"text,label\na,0\nb,2\nc,10\n")
    data = load_text_data(str(tmp_path / "a.csv"), "classification")
    assert data.labels == [0, 1, 2] and data.label_names == ["0", "2", "10"]  # numeric order, not text order
    with pytest.raises(ValueError, match=r"row 3 \(line 4\), column 'label': class id 10 is outside the model's 3 "
                                         r"labels \(0\.\.2\)"):
        load_text_data(str(tmp_path / "a.csv"), "classification", num_labels=3)
    with_head = load_text_data(str(tmp_path / "a.csv"), "classification", num_labels=11)
    assert with_head.labels == [0, 2, 10] and len(with_head.label_names) == 11  # ids used as they are
    (tmp_path / "b.csv").write_bytes(b"text,label\na,x\nb,y\nc,z\n")
    with pytest.raises(ValueError, match=r"has 3 classes \(x, y, z\), but the model's classifier has 2 labels"):
        load_text_data(str(tmp_path / "b.csv"), "classification", num_labels=2)


def test_texts_and_labels_are_read_as_written(tmp_path):
    (tmp_path / "a.csv").write_bytes('\ufefftext,label\n"NA, quoted",neg\nnull,pos\n'.encode("utf-8"))
    data = load_text_data(str(tmp_path / "a.csv"), "classification")  # BOM skipped, no NA guessing
    assert data.texts == ["NA, quoted", "null"] and data.label_names == ["neg", "pos"]
    (tmp_path / "a.json").write_bytes(b'[{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]')
    assert load_text_data(str(tmp_path / "a.json"), "classification").labels == [0, 1]
