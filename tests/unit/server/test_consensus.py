"""The consensus rule of multi-task phases: the mean of a team's per-task ranks, ranked
ascending with shared ranks on equal means (1, 1, 3); a team without a rank on some task is
listed as incomplete and not ranked."""

from __future__ import annotations

from server.leaderboards.consensus import consensus

TASKS = ["a", "b", "c"]


def rows(entries: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(e["team"], e["rank"], e["mean_rank"], e["complete"]) for e in entries]


def test_mean_rank_orders_teams() -> None:
    ranks = {
        "a": {"x": 1, "y": 2, "z": 3},
        "b": {"x": 2, "y": 1, "z": 3},
        "c": {"x": 1, "y": 3, "z": 2},
    }
    out = consensus(TASKS, ranks)
    assert rows(out) == [
        ("x", 1, 4 / 3, True),
        ("y", 2, 2.0, True),
        ("z", 3, 8 / 3, True),
    ]
    assert out[0]["task_ranks"] == {"a": 1, "b": 2, "c": 1}


def test_equal_means_share_a_rank_and_the_next_rank_skips() -> None:
    ranks = {"a": {"x": 1, "y": 2, "z": 3}, "b": {"x": 2, "y": 1, "z": 3}}
    out = consensus(["a", "b"], ranks)
    # x and y both average 1.5: rank 1 each, listed by team name; z is third.
    assert rows(out) == [("x", 1, 1.5, True), ("y", 1, 1.5, True), ("z", 3, 3.0, True)]


def test_means_equal_as_fractions_tie_even_where_floats_differ() -> None:
    # 1/3 + 1/3 + 1/3 style sums: compared exactly, not as rounded floats.
    ranks = {"a": {"x": 1, "y": 3}, "b": {"x": 3, "y": 2}, "c": {"x": 2, "y": 1}}
    out = consensus(TASKS, ranks)
    assert [e["rank"] for e in out] == [1, 1]


def test_tied_task_ranks_count_as_given() -> None:
    # A task board's shared rank (a statistical tie) is used as the board shows it.
    ranks = {"a": {"x": 1, "y": 1, "z": 3}, "b": {"x": 1, "y": 2, "z": 2}}
    assert rows(consensus(["a", "b"], ranks)) == [
        ("x", 1, 1.0, True),
        ("y", 2, 1.5, True),
        ("z", 3, 2.5, True),
    ]


def test_a_team_missing_a_task_is_incomplete_and_not_ranked() -> None:
    ranks = {
        "a": {"x": 2, "y": 1, "w": 3},
        "b": {"x": 1, "y": None},  # y is on b's board but unranked; w is not on it at all
    }
    out = consensus(["a", "b"], ranks)
    assert rows(out) == [("x", 1, 1.5, True), ("w", None, None, False), ("y", None, None, False)]
    assert out[1]["task_ranks"] == {"a": 3, "b": None}
    assert out[2]["task_ranks"] == {"a": 1, "b": None}
    assert out[1]["missing"] == ["b"]


def test_no_tasks_or_no_teams() -> None:
    assert consensus(["a"], {"a": {}}) == []
    assert consensus([], {}) == []
