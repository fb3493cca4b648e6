"""Class descriptions: key phrases per class of one dataset, for methods whose prompts carry external knowledge
(KAPT's discrete knowledge prompt).

A dataset's descriptions live in the catalog, assets_catalog/descriptions/<Dataset>.yaml, one mapping of class name
to a non-empty list of key phrases. The catalog checks every file when it loads (models/catalog/descriptions.py);
a method reads them from ClassifierContext.class_descriptions, and its checkpoint records them, so that evaluation
elsewhere rebuilds the prompts it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ClassDescriptionsError(ValueError):
    """A descriptions file that does not describe its dataset's classes; the message names the file and class."""


@dataclass(frozen=True)
class ClassDescriptions:
    file: str  # where they come from, as the catalog names it ("descriptions/Digits.yaml")
    phrases: tuple[tuple[str, tuple[str, ...]], ...]  # (class name, its key phrases), in the file's order

    @classmethod
    def from_mapping(cls, file: str, raw: Any) -> ClassDescriptions:
        """Checked: a mapping of class names to non-empty lists of non-empty strings."""
        if not isinstance(raw, dict) or not raw:
            raise ClassDescriptionsError(f"{file}: expected a mapping of class names to lists of key phrases, "
                                         f"got {type(raw).__name__}")
        phrases = []
        for classname, listed in raw.items():
            if not isinstance(classname, str) or not classname.strip():
                raise ClassDescriptionsError(f"{file}: class {classname!r}: a class name must be a non-empty string")
            if isinstance(listed, str):
                listed = [listed]
            if not isinstance(listed, list) or not listed:
                raise ClassDescriptionsError(f"{file}: class {classname!r}: description: expected a non-empty list "
                                             f"of key phrases, got {listed!r}")
            for phrase in listed:
                if not isinstance(phrase, str) or not phrase.strip():
                    raise ClassDescriptionsError(f"{file}: class {classname!r}: description: every key phrase must "
                                                 f"be a non-empty string, got {phrase!r}")
            phrases.append((classname, tuple(phrase.strip() for phrase in listed)))
        # A key phrase that is another class's name puts that class's evidence into this class's prompt: the two
        # prompts then score alike, the opposite of knowledge.
        names = {name.strip().lower(): name for name, _ in phrases}
        for classname, listed in phrases:
            for phrase in listed:
                other = names.get(phrase.lower())
                if other is not None and other != classname:
                    raise ClassDescriptionsError(
                        f"{file}: class {classname!r}: description: key phrase {phrase!r} is the name of another "
                        f"class ({other!r}); describe what tells {classname!r} apart instead")
        return cls(file, tuple(phrases))

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "phrases": {name: list(listed) for name, listed in self.phrases}}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> ClassDescriptions | None:
        """What as_dict wrote (a checkpoint's record); None stays None."""
        if raw is None:
            return None
        return cls.from_mapping(raw["file"], raw["phrases"])

    def check_classes(self, classnames: list[str] | tuple[str, ...], exact: bool = True) -> None:
        """Refuse a file that misses one of the classes or (exact) names a class the dataset does not have."""
        described = {name for name, _ in self.phrases}
        missing = [name for name in classnames if name not in described]
        if missing:
            raise ClassDescriptionsError(f"{self.file}: class {missing[0]!r}: no description (missing classes: "
                                         f"{missing})")
        if exact:
            unknown = [name for name, _ in self.phrases if name not in set(classnames)]
            if unknown:
                raise ClassDescriptionsError(f"{self.file}: class {unknown[0]!r}: not a class of the dataset "
                                             f"(unknown classes: {unknown}; its classes: {list(classnames)})")

    def for_classes(self, classnames: list[str]) -> list[tuple[str, ...]]:
        """The key phrases of each class, in the order asked (every class must be described)."""
        self.check_classes(classnames, exact=False)
        by_name = dict(self.phrases)
        return [by_name[name] for name in classnames]
