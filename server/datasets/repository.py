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


def list_cases(session: Session, dataset_id: int) -> list[Case]:
    return list(
        session.scalars(select(Case).where(Case.dataset_id == dataset_id).order_by(Case.name))
    )
