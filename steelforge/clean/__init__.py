"""Cleaning: raw documents -> kept + rejected (operator, statistic, bound) + errors, with dedup barriers."""
