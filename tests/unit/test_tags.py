import pytest

from batchroute.errors import InputError
from batchroute.jobs import JobOptions
from batchroute.tags import check_tags, parse_tags


def test_parse_tags_last_value_wins() -> None:
    assert parse_tags(["team=legal", "env=", "team=ops"]) == {"team": "ops", "env": ""}
    with pytest.raises(InputError, match="bad tag 'no-equals'"):
        parse_tags(["no-equals"])


@pytest.mark.parametrize("tags", [{"bad key": "x"}, {"": "x"}, {"k" * 65: "x"}, {"team": "x" * 201},
                                  {"team": "two\nlines"}, {"team": 3}])
def test_python_api_tags_are_checked(tags: dict) -> None:
    with pytest.raises(InputError) as exc:
        JobOptions(tags=tags).validate()
    assert exc.value.field == "tag"
    check_tags({"team": "legal", "cost.center": ""})  # good ones pass
