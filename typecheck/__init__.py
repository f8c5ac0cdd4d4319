"""Files for type checkers only (scripts/lint): nothing here is imported at run time."""
