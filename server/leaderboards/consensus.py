"""The consensus board of a multi-task phase: teams ranked by the mean of their ranks on
the task boards (AUC23-style rank aggregation).

The rule, in full:
- A team's rank on a task is the rank its entry holds on that task's board, shared ranks
  (statistical or exact ties) included, as the board shows it.
- A team with no ranked entry on some task (no successful run of that task, or an entry the
  board leaves unranked) is incomplete: listed after the ranked teams, with the ranks it has,
  and not ranked.
- Complete teams are ordered by mean rank, lowest first, compared exactly (as fractions, so
  equal means are equal however they were summed). Equal means share a rank, and the next
  mean takes its 1-based position (1, 1, 3), as the task boards do. Teams sharing a rank,
  and incomplete teams, are listed by name.

Pure: no database; `server.leaderboards.tasks` feeds it the stored task boards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

RULE = (
    "teams are ranked by the mean of their ranks on the task boards, lowest first; equal "
    "means share a rank (1, 1, 3); a team without a rank on every task is incomplete and "
    "not ranked"
)


def consensus(
    tasks: Sequence[str], ranks: Mapping[str, Mapping[str, int | None]]
) -> list[dict[str, Any]]:
    """One entry per team on any task board: rank (None when incomplete), mean_rank, the
    rank per task (None where it has none), complete, and the tasks it is missing."""
    teams = sorted({team for task in tasks for team in ranks.get(task, {})})
    complete: list[tuple[Fraction, str, dict[str, int | None]]] = []
    incomplete: list[dict[str, Any]] = []
    for team in teams:
        per_task = {task: ranks.get(task, {}).get(team) for task in tasks}
        missing = [task for task, rank in per_task.items() if rank is None]
        if missing:
            incomplete.append(
                {
                    "team": team,
                    "rank": None,
                    "mean_rank": None,
                    "task_ranks": per_task,
                    "complete": False,
                    "missing": missing,
                }
            )
            continue
        ranked = [r for r in per_task.values() if r is not None]
        complete.append((Fraction(sum(ranked), len(ranked)), team, per_task))
    complete.sort(key=lambda row: (row[0], row[1]))
    out: list[dict[str, Any]] = []
    rank = 0
    previous: Fraction | None = None
    for position, (mean, team, per_task) in enumerate(complete, start=1):
        if mean != previous:
            rank, previous = position, mean
        out.append(
            {
                "team": team,
                "rank": rank,
                "mean_rank": float(mean),
                "task_ranks": per_task,
                "complete": True,
                "missing": [],
            }
        )
    return out + incomplete
