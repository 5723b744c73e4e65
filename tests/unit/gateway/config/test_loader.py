"""The one loader: YAML in, a model out, or one line naming the file, the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config.loader import ConfigError, describe, key_path, load_model, read_yaml, validate


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: int | str = 8000
    wait_s: float = Field(default=1.0, gt=0)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    items: list[Inner] = Field(default_factory=list)
    by_name: dict[str, Inner] = Field(default_factory=dict)
    optional: Inner | None = None


def refusal(raw: object) -> str:
    with pytest.raises(ConfigError) as refused:
        validate(raw, Outer, "outer.yaml")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("outer.yaml: ")
    return message.removeprefix("outer.yaml: ")


def test_key_paths_are_written_as_in_the_file() -> None:
    assert key_path(("pools", 0, "queue", "max_wait_s")) == "pools[0].queue.max_wait_s"
    assert key_path(("prices", 2, "completion_per_million")) == "prices[2].completion_per_million"
    assert key_path(()) == "" and key_path(("defaults",)) == "defaults"


def test_a_valid_document_becomes_the_model(tmp_path: Path) -> None:
    path = tmp_path / "outer.yaml"
    path.write_text("name: a\nitems:\n  - port: 1\n")
    assert load_model(path, Outer) == Outer(name="a", items=[Inner(port=1)])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"name": "a", "items": [{"wait_s": -1}]},
            "items[0].wait_s: Input should be greater than 0 (got -1)",
        ),
        (
            {"name": "a", "items": [{}, {"wiat_s": 1}]},
            "items[1].wiat_s: unknown key; expected one of port, wait_s",
        ),
        (
            {"name": "a", "by_name": {"x": {"bad": 1}}},
            "by_name.x.bad: unknown key; expected one of port, wait_s",
        ),
        ({"name": "a", "optional": {"bad": 1}}, "optional.bad: unknown key; expected one of port, wait_s"),
        ({"nmae": "a"}, "name: required key is missing; nmae: unknown key; expected one of name, items"),
        ({"name": "a", "items": 3}, "items: Input should be a valid list (got 3)"),
        (
            {"name": "a", "items": [{"port": [1]}]},
            "items[0].port: Input should be a valid integer, or Input should be a valid string",
        ),
        ({"name": "a", "items": [{"wait_s": "x" * 100}]}, "(got 'xxxxxxxxxxxxxxxx"),
    ],
)
def test_every_problem_names_its_key_path_and_what_was_expected(raw: object, message: str) -> None:
    assert message in refusal(raw)


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert (
        refusal(["name"]) == "expected a mapping with the keys name, items, by_name, optional, not ['name']"
    )


def test_a_validators_own_message_is_kept_without_pydantics_prefix() -> None:
    class Checked(BaseModel):
        value: int

        def model_post_init(self, context: object) -> None:
            if self.value > 1:
                raise ValueError("must be at most 1")

    with pytest.raises(ValidationError) as refused:
        Checked(value=2)
    assert describe(refused.value) == "must be at most 1"


def test_files_that_cannot_be_read_or_parsed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent.yaml: no such file$"):
        read_yaml(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [\n")
    with pytest.raises(ConfigError) as refused:
        load_model(broken, Outer)
    message = str(refused.value)
    assert message.startswith(f"{broken}: invalid YAML: ") and "at line 2, column 1" in message
    assert "\n" not in message
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert read_yaml(empty) == {}  # an empty file is an empty mapping: each model says what it needs
    with pytest.raises(ConfigError, match="empty.yaml: name: required key is missing"):
        load_model(empty, Outer)
