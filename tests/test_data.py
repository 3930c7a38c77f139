from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from iwdctl.classes import ClassIndex, imagenet_class_names, imagenet_wnids
from iwdctl.data import discover
from iwdctl.errors import ClassNameError, InputError

CLASSES = ClassIndex(imagenet_class_names(), imagenet_wnids())


def _image(path, value: int = 100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_wnid_folders_map_onto_model_classes(tmp_path):
    _image(tmp_path / "n02793495" / "a.JPEG")
    _image(tmp_path / "n09256479" / "b.JPEG")
    samples = discover([tmp_path], CLASSES)
    assert [(s.path.name, s.label) for s in samples] == [("a.JPEG", 425), ("b.JPEG", 973)]


@pytest.mark.parametrize("folder", ["coral_reef", "coral reef", "Coral Reef"])
def test_name_folders_map_onto_model_classes(tmp_path, folder):
    _image(tmp_path / folder / "x.png")
    _image(tmp_path / "barn" / "y.png")
    labels = {s.path.name: s.label for s in discover([tmp_path], CLASSES)}
    assert labels == {"x.png": 973, "y.png": 425}


def test_unknown_class_folder_fails_with_suggestion(tmp_path):
    _image(tmp_path / "barnn" / "x.png")
    with pytest.raises(ClassNameError, match="barnn.*did you mean 'barn'"):
        discover([tmp_path], CLASSES)


def test_csv_one_based_and_zero_based(tmp_path):
    _image(tmp_path / "images" / "abc.png")
    _image(tmp_path / "images" / "def.png")
    (tmp_path / "images.csv").write_text("ImageId,TrueLabel,TargetClass\nabc,426,1\ndef,974,2\n")
    samples = discover([tmp_path], CLASSES)
    assert [(s.key, s.label, s.target) for s in samples] == [("abc", 425, 0), ("def", 973, 1)]
    shifted = discover([tmp_path / "images"], CLASSES, labels_csv=tmp_path / "images.csv", one_based=False)
    assert [s.label for s in shifted] == [426, 974]
    (tmp_path / "names.csv").write_text("file,label\nimages/abc.png,barn\nimages/def.png,n09256479\n")
    named = discover([tmp_path], CLASSES, labels_csv=tmp_path / "names.csv")
    assert [s.label for s in named] == [425, 973]
    # A targets-only CSV (no label column): labels unknown, TargetClass still one-based.
    (tmp_path / "targets.csv").write_text("ImageId,TargetClass\nabc,1\ndef,2\n")
    targeted = discover([tmp_path / "images"], CLASSES, labels_csv=tmp_path / "targets.csv")
    assert [(s.label, s.target) for s in targeted] == [(None, 0), (None, 1)]


def test_csv_problems(tmp_path):
    _image(tmp_path / "abc.png")
    (tmp_path / "bad.csv").write_text("name,whatever\nabc,1\n")
    with pytest.raises(InputError, match="needs a file column"):
        discover([tmp_path], CLASSES, labels_csv=tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("file,label\nzzz.png,1\n")
    with pytest.raises(InputError, match="not found"):
        discover([tmp_path], CLASSES, labels_csv=tmp_path / "missing.csv")


def test_flat_folder_is_unlabelled_and_empty_folder_fails(tmp_path):
    _image(tmp_path / "flat" / "one.png")
    _image(tmp_path / "flat" / "two.jpg")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    samples = discover([tmp_path / "flat"], CLASSES)
    assert [(s.key, s.label) for s in samples] == [("one", None), ("two", None)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        discover([tmp_path / "empty"], CLASSES)
    with pytest.raises(InputError, match="no such"):
        discover([tmp_path / "absent"], CLASSES)


def test_tiny6_layout(tmp_path):
    from .conftest import shared_data

    root = shared_data("tiny6", "val")
    samples = discover([root], CLASSES)
    assert len(samples) == 300
    assert {s.label for s in samples} == {425, 970, 972, 973, 975, 978}
    local = tmp_path / "copy"
    shutil.copytree(root / "barn", local / "barn")
    assert {s.label for s in discover([local], ClassIndex(["alp", "barn"]))} == {1}
