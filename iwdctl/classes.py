"""Class names, ImageNet wnids and resolving what a user types into a class index."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from importlib import resources

from iwdctl.errors import ClassNameError


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids, in class-index order (shipped as package data)."""
    text = resources.files("iwdctl.resources").joinpath("imagenet_wnids.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(wnids) == 1000, "package data imagenet_wnids.txt is damaged"
    return wnids


def normalize_name(name: str) -> str:
    """Case, spaces, underscores and hyphens are ignored when names are compared."""
    return "".join(character for character in name.lower() if character not in " _-'")


class ClassIndex:
    """Maps names (any case, spaces or underscores), indices and wnids onto class indices."""

    def __init__(self, class_names: Sequence[str], wnids: Sequence[str] | None = None) -> None:
        self.class_names = tuple(class_names)
        self.wnids = tuple(wnids) if wnids else None
        self._by_name: dict[str, list[int]] = {}
        for index, name in enumerate(self.class_names):
            self._by_name.setdefault(normalize_name(name), []).append(index)
        self._by_wnid = {wnid: index for index, wnid in enumerate(self.wnids or ())}

    def __len__(self) -> int:
        return len(self.class_names)

    def resolve(self, query: str | int) -> int:
        """A class index for a name, an index ("425") or a wnid ("n02793495")."""
        text = str(query).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(self.class_names):
                raise ClassNameError(f"class index {index} out of range 0..{len(self.class_names) - 1}")
            return index
        if text in self._by_wnid:
            return self._by_wnid[text]
        matches = self._by_name.get(normalize_name(text), [])
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ClassNameError(f"class name {text!r} is ambiguous: indices {matches}; give an index or wnid")
        raise ClassNameError(f"unknown class {text!r}{self._suggest(text)}")

    def _suggest(self, text: str) -> str:
        close = difflib.get_close_matches(normalize_name(text), list(self._by_name), n=3, cutoff=0.6)
        names = [self.class_names[self._by_name[key][0]] for key in close]
        return f"; did you mean {', '.join(repr(name) for name in names)}?" if names else ""

    def name(self, index: int) -> str:
        return self.class_names[index]
