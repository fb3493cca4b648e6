"""Hand-crafted templates in consecutive groups: a dataset's template list with the size of each group.

MoCoOp (models/prompting/methods/mocoop.py) learns one soft prompt per group, starting from the group's first
template, and pulls it towards the mean text feature of the group's templates. The list and the sizes come from the
catalog (datasets.yaml: `template_groups: {templates: [...], groups: [...]}`, as the authors' dataset configs give
PROMPTS and GROUPS); the sizes must cover the list exactly, each group at least one template, which is checked here
and, naming file, entry and field, when the catalog loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class TemplateGroupsError(ValueError):
    """A template list and its group sizes that do not describe consecutive, non-empty groups covering the list;
    `field` names the field at fault (templates, groups[2], ...; empty: the mapping itself)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field, self.problem = field, problem

    def within(self, place: str) -> str:
        """The message with the field under `place` (e.g. "datasets.yaml: datasets[3] (DTD): template_groups")."""
        return f"{place}.{self.field}: {self.problem}" if self.field else f"{place}: {self.problem}"


@dataclass(frozen=True)
class TemplateGroups:
    templates: tuple[str, ...]
    groups: tuple[int, ...]  # sizes of consecutive groups of `templates`, in order

    def __post_init__(self) -> None:
        templates, groups = self.templates, self.groups
        if not isinstance(templates, (list, tuple)) or not templates:
            raise TemplateGroupsError("templates", f"expected a non-empty list of templates, got {templates!r}")
        for index, template in enumerate(templates):
            if not isinstance(template, str) or template.count("{}") != 1:
                raise TemplateGroupsError(f"templates[{index}]", f"expected a string with exactly one '{{}}', got "
                                                             f"{template!r}")
        if not isinstance(groups, (list, tuple)) or not groups:
            raise TemplateGroupsError("groups", f"expected a non-empty list of group sizes, got {groups!r}")
        for index, size in enumerate(groups):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise TemplateGroupsError(f"groups[{index}]", f"a group size must be an integer >= 1, got {size!r}")
        if sum(groups) != len(templates):
            raise TemplateGroupsError("groups", f"the sizes {list(groups)} add up to {sum(groups)}, but templates "
                                                f"lists {len(templates)}; the groups must cover every template "
                                                "exactly once")
        object.__setattr__(self, "templates", tuple(templates))
        object.__setattr__(self, "groups", tuple(groups))

    @property
    def first_templates(self) -> list[str]:
        """The first template of every group (where MoCoOp's experts start)."""
        starts = [sum(self.groups[:index]) for index in range(len(self.groups))]
        return [self.templates[start] for start in starts]

    def as_dict(self) -> dict[str, list]:
        return {"templates": list(self.templates), "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, raw: Any) -> "TemplateGroups":
        """From `{templates: [...], groups: [...]}` (the catalog's and the checkpoint config's form)."""
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, dict):
            raise TemplateGroupsError("", f"expected a mapping with 'templates' and 'groups', got {raw!r}")
        unknown = sorted(set(raw) - {"templates", "groups"}, key=str)
        if unknown:
            raise TemplateGroupsError("", f"unknown field(s) {unknown}; known: ['groups', 'templates']")
        for field in ("templates", "groups"):
            if field not in raw:
                raise TemplateGroupsError(field, "missing")
        return cls(raw["templates"], raw["groups"])
