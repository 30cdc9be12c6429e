"""`python -m evaluation`: the evaluation container's entry point."""

from evaluation.evaluate import main

raise SystemExit(main())
