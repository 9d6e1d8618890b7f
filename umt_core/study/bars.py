"""The study's CPU goal as numbers, apart from the code that checks it (`goal`), so that
pages that only mark runs against it import no model code."""

# The bars; a rate criterion's value is the share of translated clips that pass it.
GOAL = {"notes_kept": 0.6, "instrument": 0.75, "closer_to_target": 0.75, "clean": 0.90,
        "success": 0.50}
TRANSLATE_10S_SECONDS = 2.0  # a 10 s clip translated in under this (CPU seconds)
GOAL_SPLIT = "test"  # the works the goal is judged on; thresholds come from val
