"""The New-run form, generated from ``RunConfig``'s JSON schema, and the submitted form read back.

Nothing here lists config fields by hand: a field added to ``config.py`` shows up in the form with its
default, its description as help text and its limits. The walk resolves ``$ref``/``$defs`` and
``anyOf`` with null; a Literal becomes a select, a bool a checkbox, a number a number input with its
bounds, a list of choices a row of checkboxes, a nested section a fieldset (a section that may be null,
such as ``train.early_stopping``, gets an on/off box), and anything richer (a list of modules, the
``data.mix`` sources) a one-line YAML value, as on the ``key=value`` command line.

Only what differs from the defaults is sent on: the submitted form becomes the nested mapping a YAML
config would hold, which the CLI's own loader validates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import yaml

from tunelab.config import RunConfig

# The first view: what people set for almost every run. Every other field is in a collapsed section.
ESSENTIALS = ("model", "task", "method", "data.train", "run_name", "train.epochs", "train.max_steps",
              "train.learning_rate", "train.batch_size", "lora.r")
# Settings the form does not offer, and why.
LEFT_OUT = {
    "output_dir": "the dashboard writes every run under its runs folder",
    "sweep": "tunelab sweep's search settings; a single run does not read them",
}
LONG_TEXT = 80  # a string default longer than this (or with a line break) gets a text area


@dataclass
class FormField:
    """One config setting as an input: ``key`` is its dotted name (train.learning_rate), also the input's name."""

    key: str
    kind: str  # select, checkbox, choices (several checkboxes), number, text, textarea, yaml
    help: str
    default: object  # the config's default, as JSON
    nullable: bool = False
    options: tuple[tuple[str, object], ...] = ()  # select and choices: (text submitted, config value)
    integer: bool = False
    bounds: dict = field(default_factory=dict)  # minimum, maximum, exclusiveMinimum, exclusiveMaximum

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()

    @property
    def limits(self) -> str:
        """The bounds as people read them: 'above 0', '0 to 0.5', 'at most 10'."""
        low = self.bounds.get("minimum", self.bounds.get("exclusiveMinimum"))
        high = self.bounds.get("maximum", self.bounds.get("exclusiveMaximum"))
        if low is not None and high is not None:
            return f"{low} to {high}{' (exclusive)' if 'exclusiveMaximum' in self.bounds else ''}"
        if low is not None:
            return f"above {low}" if "exclusiveMinimum" in self.bounds else f"at least {low}"
        if high is not None:
            return f"below {high}" if "exclusiveMaximum" in self.bounds else f"at most {high}"
        return ""

    def text_of(self, value) -> object:
        """``value`` as the input shows it (a bool for a checkbox, a list of texts for choices)."""
        if self.kind == "checkbox":
            return bool(value)
        if self.kind in ("select", "choices"):
            texts = [text for text, option in self.options if option in (value if self.kind == "choices" else [value])]
            return texts if self.kind == "choices" else (texts[0] if texts else "")
        if value is None:
            return ""
        if self.kind == "yaml":
            return value if isinstance(value, str) else json.dumps(value)
        return repr(value) if isinstance(value, float) else str(value)

    def value_of(self, submitted) -> tuple[object, str | None]:
        """The config value of what the form sent (a text, a list of texts for choices, None for an unticked
        box), and a problem when it cannot be read; values of the wrong type go on to the config's checks."""
        if self.kind == "checkbox":
            return submitted is not None, None
        if self.kind == "choices":
            chosen = set(submitted or [])
            return [option for text, option in self.options if text in chosen], None
        text = (submitted or "").replace("\r\n", "\n")
        if self.kind == "select":
            return dict(self.options).get(text, text), None
        if not text.strip():
            if self.nullable:
                return None, None
            return ("", None) if self.kind in ("text", "textarea") else (None, "needs a value")
        if self.kind == "number":
            return number_or_text(text.strip()), None
        if self.kind == "yaml":
            try:
                return yaml.safe_load(text), None
            except yaml.YAMLError as exc:
                return None, f"not valid YAML ({str(exc).splitlines()[0]})"
        return text, None


@dataclass
class FormSection:
    """A config section (train, lora, train.early_stopping) as a fieldset; the root section has key ''."""

    key: str
    help: str
    fields: list[FormField]
    sections: list[FormSection]
    optional: bool = False  # may be null: an on/off box named after the section
    on_by_default: bool = True

    @property
    def label(self) -> str:
        return self.key.rsplit(".", 1)[-1].replace("_", " ").capitalize() if self.key else "Run"

    def all_fields(self) -> list[FormField]:
        return self.fields + [f for section in self.sections for f in section.all_fields()]

    def all_sections(self) -> list[FormSection]:
        return [self] + [s for section in self.sections for s in section.all_sections()]


def number_or_text(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text  # the config's check says it is not a number, beside the field


def build_form(schema: dict | None = None, defaults: dict | None = None) -> FormSection:
    """The whole form: the root section (top-level fields) holding one section per config section."""
    schema = schema or RunConfig.model_json_schema()
    defaults = defaults if defaults is not None else RunConfig().model_dump(mode="json")
    return section_of(schema, schema, "", defaults, "")


def resolved(root: dict, node: dict) -> dict:
    """``node`` with its ``$ref`` followed into ``root``'s ``$defs`` (the node's own keys win)."""
    if "$ref" not in node:
        return node
    target = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return {**resolved(root, target), **{k: v for k, v in node.items() if k != "$ref"}}


def without_null(root: dict, node: dict) -> tuple[dict, bool]:
    """(the node without its null alternative, whether null is allowed)."""
    choices = node.get("anyOf")
    if not choices or not any(choice.get("type") == "null" for choice in choices):
        return resolved(root, node), False
    rest = [choice for choice in choices if choice.get("type") != "null"]
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    inner = {**resolved(root, rest[0]), **outer} if len(rest) == 1 else {**outer, "anyOf": rest}
    return inner, True


def joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def section_of(root: dict, node: dict, key: str, defaults: dict, help: str, optional: bool = False,
               on: bool = True) -> FormSection:
    fields, sections = [], []
    for name, prop in node.get("properties", {}).items():
        sub_key = joined(key, name)
        if sub_key in LEFT_OUT:
            continue
        inner, nullable = without_null(root, prop)
        default = defaults.get(name, inner.get("default"))
        description = prop.get("description") or inner.get("description") or ""
        if inner.get("type") == "object" and "properties" in inner:
            sections.append(section_of(root, inner, sub_key, default or {}, description, optional=nullable,
                                       on=default is not None))
        else:
            fields.append(field_of(root, inner, sub_key, default, description, nullable))
    return FormSection(key, help, fields, sections, optional, on)


def choice_options(root: dict, alternatives: list[dict]) -> list[tuple[str, object]] | None:
    """Select options when every alternative is a bool, a Literal or a constant; else None."""
    options = []
    for alternative in (resolved(root, a) for a in alternatives):
        if alternative.get("type") == "boolean":
            options += [("true", True), ("false", False)]
        elif "enum" in alternative or "const" in alternative:
            options += [(str(v), v) for v in alternative.get("enum", [alternative.get("const")])]
        else:
            return None
    return options


def field_of(root: dict, node: dict, key: str, default, description: str, nullable: bool) -> FormField:
    def make(kind: str, **extra) -> FormField:
        return FormField(key, kind, description, default, nullable, **extra)

    alternatives = node.get("anyOf") or ([node] if "enum" in node or "const" in node else [])
    options = choice_options(root, alternatives) if alternatives else None
    if options is not None:
        return make("select", options=tuple(([("", None)] if nullable else []) + options))
    kind = node.get("type")
    if kind == "boolean":
        return make("select", options=(("", None), ("true", True), ("false", False))) if nullable else make("checkbox")
    if kind in ("integer", "number"):
        bounds = {k: node[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in node}
        return make("number", integer=kind == "integer", bounds=bounds)
    if kind == "array":
        items = resolved(root, node.get("items", {}))
        options = choice_options(root, [items]) if ("enum" in items or "const" in items) else None
        return make("choices", options=tuple(options)) if options else make("yaml")
    if kind == "string":
        long = isinstance(default, str) and ("\n" in default or len(default) > LONG_TEXT)
        return make("textarea" if long else "text")
    return make("yaml")


def chosen_settings(form: FormSection, submitted) -> tuple[dict, dict[str, str]]:
    """(the nested config mapping of every setting that differs from its default, problems by field key).

    ``submitted`` answers ``get(key)`` (a text or None) and ``getlist(key)``, as a Starlette form does.
    """
    chosen: dict = {}
    problems: dict[str, str] = {}
    _collect(form, submitted, chosen, problems)
    return chosen, problems


def _collect(section: FormSection, submitted, chosen: dict, problems: dict[str, str]) -> None:
    if section.optional:
        on = submitted.get(section.key) is not None
        if not on:
            if section.on_by_default:
                put(chosen, section.key, None)
            return
        if not section.on_by_default:
            put(chosen, section.key, {})
    for item in section.fields:
        raw = submitted.getlist(item.key) if item.kind == "choices" else submitted.get(item.key)
        value, problem = item.value_of(raw)
        if problem:
            problems[item.key] = problem
        elif value != item.default:
            put(chosen, item.key, value)
    for sub in section.sections:
        _collect(sub, submitted, chosen, problems)


def put(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def shown_values(form: FormSection, submitted=None) -> dict[str, object]:
    """What each input shows: the submitted text when there was a submission, else the default."""
    values = {}
    for section in form.all_sections():
        if section.optional:
            values[section.key] = (submitted.get(section.key) is not None) if submitted is not None \
                else section.on_by_default
    for item in form.all_fields():
        if submitted is None:
            values[item.key] = item.text_of(item.default)
        elif item.kind == "choices":
            values[item.key] = submitted.getlist(item.key)
        elif item.kind == "checkbox":
            values[item.key] = submitted.get(item.key) is not None
        else:
            values[item.key] = (submitted.get(item.key) or "").replace("\r\n", "\n")
    return values


def field_for_problem(form: FormSection, location: str) -> str | None:
    """The field (or optional section) a config problem's location points at: the longest key that is the
    location or a dotted prefix of it (data.mix.0.train -> data.mix)."""
    keys = [f.key for f in form.all_fields()] + [s.key for s in form.all_sections() if s.key]
    matches = [k for k in keys if location == k or location.startswith(k + ".")]
    return max(matches, key=len) if matches else None
