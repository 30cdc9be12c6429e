"""heldout's default evaluation container: challenge metrics, uncertainty and leaderboards.

Standalone on purpose (numpy, scipy, scikit-learn only): it runs inside the evaluation image
and the server imports its pure functions (`evaluation.leaderboard`, `evaluation.stats`).
"""

__version__ = "0.1.0"
# Stored with every result so a leaderboard can tell which scorer produced it.
EVALUATOR_VERSION = f"heldout-evaluation {__version__}"
