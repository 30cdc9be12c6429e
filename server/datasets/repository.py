from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.datasets.models import Case, Dataset


def get_dataset(session: Session, challenge_id: int, slug: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.challenge_id == challenge_id, Dataset.slug == slug)
    )


def list_datasets(session: Session, challenge_id: int) -> list[Dataset]:
    return list(session.scalars(select(Dataset).where(Dataset.challenge_id == challenge_id)))


def list_cases(session: Session, dataset_id: int, *, retired: bool = False) -> list[Case]:
    """The dataset's current cases; `retired`: also those a newer version removed."""
    stmt = select(Case).where(Case.dataset_id == dataset_id)
    if not retired:
        stmt = stmt.where(Case.retired.is_(False))
    return list(session.scalars(stmt.order_by(Case.name)))
