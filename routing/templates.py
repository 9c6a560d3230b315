"""Name templates such as "tenant.{tenant}": parsing, filling in, and recognising names.

Syntax: literal text with placeholders `{name}`, where name is a user attribute
(`tenant`, `tier`, `group` or one declared in the policy's `attributes`). No format
specs, conversions, indexing or literal braces. Filled-in values must look like
`TEMPLATE_VALUE_PATTERN`, so a value can neither inject a separator nor collide with
another tenant's queue name, and a filled-in name can be parsed back unambiguously.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from routing.errors import TemplateValueError

TEMPLATE_VALUE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
"""What a value filled into a template may look like (letters, digits, '_', '-')."""

_VALUE = re.compile(TEMPLATE_VALUE_PATTERN)
_PLACEHOLDER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateSyntaxError(ValueError):
    """A template string is malformed."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed name template; a name without placeholders is a static template."""

    text: str
    parts: tuple[tuple[str, str | None], ...]
    placeholders: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse `text`, raising TemplateSyntaxError when it is not a valid template."""
        try:
            pieces = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise TemplateSyntaxError(f"{text!r} is not a valid template: {exc}") from None
        parts: list[tuple[str, str | None]] = []
        for literal, name, format_spec, conversion in pieces:
            if "{" in literal or "}" in literal:
                raise TemplateSyntaxError(
                    f"{text!r}: braces may only surround a placeholder such as {{tenant}}"
                )
            if name is not None and (
                format_spec or conversion or not _PLACEHOLDER_NAME.fullmatch(name)
            ):
                raise TemplateSyntaxError(
                    f"{text!r}: placeholder {{{name}{':' + format_spec if format_spec else ''}}}"
                    " must be a plain attribute name such as {tenant}"
                )
            parts.append((literal, name))
        placeholders = frozenset(name for _, name in parts if name is not None)
        return cls(text, tuple(parts), placeholders)

    @property
    def is_static(self) -> bool:
        """True when the template has no placeholders, so it is just a name."""
        return not self.placeholders

    def render(self, values: Mapping[str, Any] | None) -> str:
        """Fill in the placeholders from `values`; raise TemplateValueError if one can't be."""
        if not self.placeholders:
            return self.text
        pieces: list[str] = []
        for literal, name in self.parts:
            pieces.append(literal)
            if name is not None:
                pieces.append(_checked_value(name, values))
        return "".join(pieces)

    def pattern(self) -> re.Pattern[str]:
        """A regex that recognises names made from this template and captures the values."""
        regex: list[str] = []
        seen: set[str] = set()
        for literal, name in self.parts:
            regex.append(re.escape(literal))
            if name is None:
                continue
            # A placeholder used twice must have the same value both times.
            repeated = name in seen
            regex.append(f"(?P={name})" if repeated else f"(?P<{name}>{TEMPLATE_VALUE_PATTERN})")
            seen.add(name)
        return re.compile("".join(regex))


def _checked_value(name: str, values: Mapping[str, Any] | None) -> str:
    if values is None:
        raise TemplateValueError(name, "the user is anonymous, so there is no value for it")
    value = values.get(name)
    if value is None:
        raise TemplateValueError(name, f"the user has no {name!r} attribute")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TemplateValueError(name, f"{value!r} is not a string or integer")
    text = str(value)
    if not _VALUE.fullmatch(text):
        raise TemplateValueError(
            name,
            f"{text!r} cannot be part of a name: use 1-64 letters, digits, '_' or '-',"
            " starting with a letter or digit",
        )
    return text
