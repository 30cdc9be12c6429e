"""`python -m worker`: a Celery worker on all queues (`heldout worker` is the usual way)."""

from server.dispatch import QUEUES
from worker.celery_app import app

if __name__ == "__main__":
    app.worker_main(["worker", "-Q", ",".join(QUEUES), "-l", "INFO"])
